"""What shared state in Redis costs per call, against local state in the same run.

CircuitBreaker and RateLimit with ``storage = "redis"`` against ``storage = "local"``,
with a redis-server on loopback started for the run (``LocalRedis``):

* in-process: the middleware over a function that returns a constant, in microseconds
  per call, sync and asyncio; the breaker on its happy path (cached closed state, no
  round trip), the breaker with ``state_cache_seconds = 0`` (a round trip on every call,
  its worst case) and the rate limit (always one round trip);
* over loopback: median latency of a Get to a server in a separate process, through a
  client chain of the breaker alone, and through a server stack of the rate limit alone,
  the variants taking turns in short rounds.

Each figure is reported with its ratio to the local variant measured in the same run.
Run with ``python -m benchmarks.redis_state [--quick]`` or ``manage.py bench redis_state``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import grpc
from rich.console import Console
from rich.table import Table

from apps.cache.protos import cache_pb2, cache_pb2_grpc
from benchmarks._common import (
    KEY,
    METHOD,
    RESULTS_DIR,
    bench_settings,
    cli,
    finish,
    header,
    print_footer,
    server_process,
)
from resilience.core.call import Call, CallKind
from resilience.core.loading import variant_for
from resilience.core.middleware import ChainInfo
from resilience.distributed import connection
from resilience.distributed.local_redis import LocalRedis
from resilience.middleware import CircuitBreaker, RateLimit
from resilience.transport.client import connect

NAME = "redis_state"
RESULTS = RESULTS_DIR / f"{NAME}.json"
HUGE = 10**9  # a rate and burst that never reject


@dataclasses.dataclass(frozen=True)
class Plan:
    inproc_number: int  # calls per in-process measurement
    inproc_repeat: int  # measurements per variant (the best is kept)
    rounds: int  # loopback rounds, the variants taking turns in each
    calls_per_round: int
    warmup_calls: int


FULL = Plan(inproc_number=5000, inproc_repeat=5, rounds=20, calls_per_round=200,
            warmup_calls=200)
QUICK = Plan(inproc_number=200, inproc_repeat=1, rounds=2, calls_per_round=20,
             warmup_calls=10)


def _values(server: LocalRedis) -> dict[str, Any]:
    return {"REDIS_URL": server.url, "REDIS_KEY_PREFIX": "bench", "REDIS_TIMEOUT": 1.0}


# --- in process ----------------------------------------------------------------------------

BREAKERS: dict[str, dict[str, Any]] = {
    "breaker_local": {},
    "breaker_redis": {"storage": "redis"},
    "breaker_redis_uncached": {"storage": "redis", "state_cache_seconds": 0.0},
}
LIMITS: dict[str, dict[str, Any]] = {
    "ratelimit_local": {"rate": float(HUGE), "burst": HUGE},
    "ratelimit_redis": {"rate": float(HUGE), "burst": HUGE, "storage": "redis"},
}
BASE = {"breaker_redis": "breaker_local", "breaker_redis_uncached": "breaker_local",
        "ratelimit_redis": "ratelimit_local"}


def _middleware(values: dict[str, Any], is_async: bool) -> dict[str, Any]:
    """Every variant over a terminal returning a constant (a coroutine under asyncio)."""
    def constant(call: Call) -> str:
        return "ok"

    async def aconstant(call: Call) -> str:
        return "ok"

    shared = {"settings": bench_settings(**values)}
    made = {}
    for names, cls, side in ((BREAKERS, CircuitBreaker, "client"),
                             (LIMITS, RateLimit, "server")):
        for name, options in names.items():
            info = ChainInfo(METHOD, CallKind.UNARY_UNARY, side, cls.__name__,  # type: ignore[arg-type]
                             shared, "127.0.0.1:1", is_async)
            opts = cls.Options(**options)
            made[name] = variant_for(cls, opts)(aconstant if is_async else constant, opts, info)
    return made


def _time_sync(fn: Callable[[Call], Any], call: Call, n: int) -> float:
    clock = time.perf_counter
    start = clock()
    for _ in range(n):
        fn(call)
    return clock() - start


async def _time_async(fn: Callable[[Call], Any], call: Call, n: int) -> float:
    clock = time.perf_counter
    start = clock()
    for _ in range(n):
        await fn(call)
    return clock() - start


def measure_in_process(plan: Plan, values: dict[str, Any]) -> dict[str, Any]:
    """Best-of-``inproc_repeat`` microseconds per call, sync then asyncio, and ratios."""
    call = Call(METHOD, CallKind.UNARY_UNARY, "client", None)
    sync = _middleware(values, is_async=False)
    us: dict[str, dict[str, float]] = {"sync": {}, "asyncio": {}}
    for name, middleware in sync.items():
        _time_sync(middleware, call, plan.warmup_calls)
        us["sync"][name] = min(
            _time_sync(middleware, call, plan.inproc_number) for _ in range(plan.inproc_repeat)
        ) * 1e6 / plan.inproc_number

    async def measure_async() -> None:
        made = _middleware(values, is_async=True)
        for name, middleware in made.items():
            await _time_async(middleware.acall, call, plan.warmup_calls)
            best = float("inf")
            for _ in range(plan.inproc_repeat):
                best = min(best, await _time_async(middleware.acall, call, plan.inproc_number))
            us["asyncio"][name] = best * 1e6 / plan.inproc_number

    asyncio.run(measure_async())
    return {
        "number": plan.inproc_number,
        "repeat": plan.inproc_repeat,
        "us_per_call": us,
        "ratio_to_local": {
            mode: {name: figures[name] / figures[base] for name, base in BASE.items()}
            for mode, figures in us.items()
        },
    }


# --- over loopback -------------------------------------------------------------------------


def measure_loopback(plan: Plan, values: dict[str, Any]) -> dict[str, Any]:
    """Median Get latency (µs) per variant over rounds taken in turn, and the median of
    the per-round ratios to the local variant."""
    server_settings = {
        "ratelimit_local": {"SERVER_MIDDLEWARE": ["resilience.middleware.RateLimit"],
                            "SERVER_OPTIONS": {"RateLimit": LIMITS["ratelimit_local"]}},
        "ratelimit_redis": {"SERVER_MIDDLEWARE": ["resilience.middleware.RateLimit"],
                            "SERVER_OPTIONS": {"RateLimit": LIMITS["ratelimit_redis"]}},
    }
    with contextlib.ExitStack() as stack:
        plain = stack.enter_context(server_process(settings=values))
        addresses = {name: stack.enter_context(server_process(settings={**values, **extra}))
                     for name, extra in server_settings.items()}
        gets: dict[str, Callable[..., Any]] = {}
        for name, options in BREAKERS.items():
            settings = bench_settings(**values,
                                      CLIENT_MIDDLEWARE=["resilience.middleware.CircuitBreaker"],
                                      CLIENT_OPTIONS={"CircuitBreaker": options})
            channel = stack.enter_context(connect(plain, settings))
            gets[name] = cache_pb2_grpc.CacheServiceStub(channel).Get
        for name, address in addresses.items():
            channel = stack.enter_context(grpc.insecure_channel(address))
            gets[name] = cache_pb2_grpc.CacheServiceStub(channel).Get
        request = cache_pb2.GetReq(key=KEY)

        def one(get: Callable[..., Any]) -> None:
            with contextlib.suppress(grpc.RpcError):  # NOT_FOUND: the key is never stored
                get(request, timeout=5.0)

        for get in gets.values():
            for _ in range(plan.warmup_calls):
                one(get)
        samples: dict[str, list[float]] = {name: [] for name in gets}
        rounds: dict[str, list[float]] = {name: [] for name in gets}
        for _ in range(plan.rounds):
            for name, get in gets.items():
                mine = []
                for _ in range(plan.calls_per_round):
                    start = time.perf_counter()
                    one(get)
                    mine.append((time.perf_counter() - start) * 1e6)
                samples[name] += mine
                rounds[name].append(statistics.median(mine))
    return {
        "rounds": plan.rounds,
        "calls_per_round": plan.calls_per_round,
        "median_us": {name: statistics.median(values) for name, values in samples.items()},
        "ratio_to_local": {
            name: statistics.median(a / b for a, b in zip(rounds[name], rounds[base],
                                                          strict=True))
            for name, base in BASE.items()
        },
    }


# --- report --------------------------------------------------------------------------------

WHAT = {
    "breaker_local": "CircuitBreaker, storage local",
    "breaker_redis": "CircuitBreaker, storage redis, cached state (no round trip)",
    "breaker_redis_uncached": "CircuitBreaker, storage redis, state_cache_seconds 0 "
                              "(a round trip per call)",
    "ratelimit_local": "RateLimit, storage local",
    "ratelimit_redis": "RateLimit, storage redis (a round trip per call)",
}


def report(results: dict[str, Any], stdout: TextIO | None = None) -> None:
    console = Console(file=stdout or sys.stdout)
    if not console.is_terminal:
        console.width = 130
    quick = " (quick: figures are rough)" if results["quick"] else ""
    inproc = results["in_process"]
    loop = results["loopback"]
    table = Table(title=f"redis state cost per call{quick}")
    for column in ("variant", "in-process µs", "ratio", "asyncio µs", "ratio",
                   "loopback µs", "ratio"):
        table.add_column(column, justify="left" if column == "variant" else "right")

    def ratio(figures: dict[str, float], name: str) -> str:
        return f"{figures[name]:.2f}x" if name in figures else "-"

    for name, what in WHAT.items():
        table.add_row(
            what,
            f"{inproc['us_per_call']['sync'][name]:.2f}",
            ratio(inproc["ratio_to_local"]["sync"], name),
            f"{inproc['us_per_call']['asyncio'][name]:.2f}",
            ratio(inproc["ratio_to_local"]["asyncio"], name),
            f"{loop['median_us'][name]:.0f}",
            ratio(loop["ratio_to_local"], name),
        )
    console.print(table)
    print_footer(console, results)


# --- entry points --------------------------------------------------------------------------


def run(
    *, quick: bool = False, stdout: TextIO | None = None, output: Path | None = None
) -> dict[str, Any]:
    """Measure, print a table to ``stdout`` and return the figures.

    A full run writes them to ``benchmarks/results/redis_state.json`` (or ``output``); a
    quick run writes only to ``output``, if given, so it never replaces full figures.
    """
    plan = QUICK if quick else FULL
    began = time.perf_counter()
    with LocalRedis() as redis_server:
        values = _values(redis_server)
        try:
            gc.collect()
            in_process = measure_in_process(plan, values)
            gc.collect()
            loopback = measure_loopback(plan, values)
        finally:
            connection.reset()
    results: dict[str, Any] = {
        **header(NAME, quick, plan, "redis"),
        "method": METHOD,
        "what": WHAT,
        "in_process": in_process,
        "loopback": loopback,
    }
    return finish(results, began, RESULTS, report, quick, stdout, output)


def main(argv: list[str] | None = None) -> int:
    return cli(argv, NAME, __doc__, run, RESULTS)


if __name__ == "__main__":
    sys.exit(main())
