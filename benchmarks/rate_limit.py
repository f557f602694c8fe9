"""How exactly RateLimit holds a server to its rate, and what it costs per call.

Two measurements:

* accuracy: for a few (rate R, burst B, seconds t) settings, a server with
  ``SERVER_MIDDLEWARE = [RateLimit]`` (key "method") runs in a separate process, sync and
  asyncio, and client threads call it as fast as they can for t seconds; the calls
  accepted are compared with R·t + B, the most a token bucket admits in t seconds, and the
  rejections' ``grpc-retry-pushback-ms`` trailers are summarised. The offered load is
  reported too: a figure is meaningful only when it is well above R.
* in-process cost: the middleware over a function that returns a constant, in
  nanoseconds per call, for an admitted call (one bucket, and a bucket per tenant), a
  rejected one, and an admitted call on the asyncio path.

Run with ``python -m benchmarks.rate_limit [--quick]`` or ``manage.py bench rate_limit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import statistics
import sys
import threading
import time
import timeit
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
    VALUE,
    ServerKind,
    cli,
    finish,
    header,
    mark,
    print_footer,
    server_process,
)
from resilience.core.call import Call, CallKind
from resilience.core.errors import PUSHBACK_KEY, RpcStatusError
from resilience.core.middleware import ChainInfo
from resilience.middleware import RateLimit

NAME = "rate_limit"
RESULTS = RESULTS_DIR / f"{NAME}.json"
ACCURACY_TARGET = 0.05  # accepted within ±5% of R·t + B


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much to measure; every loop in the benchmark is bounded by these numbers."""

    limits: tuple[tuple[float, int], ...]  # (rate, burst)
    seconds: float
    threads: int
    servers: tuple[ServerKind, ...]
    inproc_number: int
    inproc_repeat: int


FULL = Plan(
    # One Python client process offers about 2000 calls/s here, so R stays well below it.
    limits=((50.0, 5), (200.0, 20), (500.0, 50)), seconds=4.0, threads=8,
    servers=("sync", "aio"), inproc_number=100_000, inproc_repeat=5,
)
QUICK = Plan(
    limits=((200.0, 20),), seconds=1.0, threads=4, servers=("sync", "aio"),
    inproc_number=2000, inproc_repeat=2,
)


# --- the rate-limited server, in its own process -------------------------------------------


def limited_server(kind: ServerKind, rate: float, burst: int
                   ) -> contextlib.AbstractContextManager[str]:
    """A cache server whose stack is one RateLimit per method, in a spawned process."""
    return server_process(kind, settings={
        "SERVER_MIDDLEWARE": ["resilience.middleware.RateLimit"],
        "SERVER_OPTIONS": {"RateLimit": {"rate": rate, "burst": burst, "key": "method"}},
        "SERVER_MAX_WORKERS": 32,
    })


# --- accuracy ------------------------------------------------------------------------------


def _pushback(exc: grpc.RpcError) -> int | None:
    for key, value in exc.trailing_metadata() or ():
        if key == PUSHBACK_KEY:
            return int(value)
    return None


def measure_accuracy(kind: ServerKind, rate: float, burst: int, plan: Plan) -> dict[str, Any]:
    """Overload one rate-limited server for ``plan.seconds``; compare accepted with R·t + B.

    The Get bucket is made, full, by the first Get, which is the first call of the run
    (Store opens the connection), so the window is the run itself.
    """
    request = cache_pb2.GetReq(key=KEY)
    threads, seconds = plan.threads, plan.seconds
    ok = [0] * threads
    pushbacks: list[list[int | None]] = [[] for _ in range(threads)]
    others: list[str] = []
    barrier = threading.Barrier(threads + 1)
    stop_at = [0.0]
    with limited_server(kind, rate, burst) as address, \
            grpc.insecure_channel(address, options=[("grpc.enable_retries", 0)]) as channel:
        stub = cache_pb2_grpc.CacheServiceStub(channel)
        stub.Store(cache_pb2.StoreReq(key=KEY, value=VALUE), timeout=10)

        def worker(i: int) -> None:
            barrier.wait()
            clock = time.perf_counter
            stop = stop_at[0]
            while clock() < stop:
                try:
                    stub.Get(request, timeout=5)
                    ok[i] += 1
                except grpc.RpcError as exc:
                    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        pushbacks[i].append(_pushback(exc))
                    else:
                        others.append(exc.code().name)

        pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
        for thread in pool:
            thread.start()
        start = time.perf_counter()
        stop_at[0] = start + seconds
        barrier.wait()
        for thread in pool:
            thread.join(seconds + 30)
        if any(thread.is_alive() for thread in pool):
            raise RuntimeError("load threads did not finish")
        elapsed = time.perf_counter() - start
    accepted = sum(ok)
    rejected = [ms for per_thread in pushbacks for ms in per_thread]
    given = sorted(ms for ms in rejected if ms is not None)
    expected = rate * seconds + burst
    return {
        "server": kind,
        "rate": rate,
        "burst": burst,
        "seconds": seconds,
        "threads": threads,
        "offered_per_s": (accepted + len(rejected) + len(others)) / elapsed,
        "accepted": accepted,
        "expected": expected,
        "accepted_over_expected": accepted / expected,
        "error_pct": (accepted / expected - 1) * 100,
        "rejected": len(rejected),
        "rejected_without_pushback": len(rejected) - len(given),
        "pushback_ms": {
            "min": given[0], "median": statistics.median(given), "max": given[-1],
        } if given else None,
        "other_errors": len(others),
    }


# --- in-process cost -----------------------------------------------------------------------


def _limiter(handler: Any, *, is_async: bool = False, **values: Any) -> RateLimit:
    info = ChainInfo(METHOD, CallKind.UNARY_UNARY, "server", "RateLimit", {}, "bench",
                     is_async)
    return RateLimit(handler, RateLimit.Options(**values), info)


def measure_in_process(plan: Plan) -> dict[str, Any]:
    """Nanoseconds per call, best of ``inproc_repeat``, with no network at all."""
    response = cache_pb2.GetResp(value=VALUE)

    def constant(call: Call) -> Any:
        return response

    async def aconstant(call: Call) -> Any:
        return response

    huge = 10**12  # a bucket that never runs dry within the measurement
    call = Call(METHOD, CallKind.UNARY_UNARY, "server", None)
    tenant_call = Call(METHOD, CallKind.UNARY_UNARY, "server", None,
                       metadata=(("user-agent", "bench"), ("x-tenant", "t1")))
    empty = _limiter(constant, rate=1e-9, burst=1)
    empty(call)
    namespace = {
        "constant": constant, "call": call, "tenant_call": tenant_call,
        "RpcStatusError": RpcStatusError, "EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
        "empty": empty,
        "one": _limiter(constant, rate=float(huge), burst=huge),
        "keyed": _limiter(constant, rate=float(huge), burst=huge, key="metadata",
                          metadata_key="x-tenant"),
    }
    names = {
        "bare_call": "constant(call)",
        "admitted": "one(call)",
        "admitted_per_tenant": "keyed(tenant_call)",
        "bare_raise": "try:\n    raise RpcStatusError(EXHAUSTED)\nexcept RpcStatusError:\n    pass",
        "rejected": "try:\n    empty(call)\nexcept RpcStatusError:\n    pass",
    }
    best: dict[str, float] = {name: float("inf") for name in names}
    aio = _limiter(aconstant, is_async=True, rate=float(huge), burst=huge)

    async def loop(fn: Any, n: int) -> float:
        clock = time.perf_counter
        start = clock()
        for _ in range(n):
            await fn(call)
        return clock() - start

    for _ in range(plan.inproc_repeat):  # interleaved, so drift touches them all alike
        for name, stmt in names.items():
            seconds = timeit.Timer(stmt, globals=namespace).timeit(plan.inproc_number)
            best[name] = min(best[name], seconds * 1e9 / plan.inproc_number)
        for name, fn in (("aio_bare_await", aconstant), ("aio_admitted", aio.acall)):
            seconds = asyncio.run(loop(fn, plan.inproc_number))
            best[name] = min(best.get(name, float("inf")), seconds * 1e9 / plan.inproc_number)
    return {
        "number": plan.inproc_number,
        "repeat": plan.inproc_repeat,
        "ns_per_call": best,
        "overhead_ns": {
            "admitted": best["admitted"] - best["bare_call"],
            "admitted_per_tenant": best["admitted_per_tenant"] - best["bare_call"],
            "rejected": best["rejected"] - best["bare_call"],
            "aio_admitted": best["aio_admitted"] - best["aio_bare_await"],
        },
        "what": {
            "bare_call": "a function returning a constant",
            "admitted": "RateLimit (key 'server') admitting a call to that function",
            "admitted_per_tenant": "RateLimit (key 'metadata') admitting a call whose "
            "tenant is the second of two metadata entries",
            "bare_raise": "raising and catching an RpcStatusError, for scale",
            "rejected": "RateLimit rejecting a call: the RESOURCE_EXHAUSTED error, its "
            "message and pushback trailer, raised and caught",
            "aio_bare_await": "awaiting a coroutine function returning a constant",
            "aio_admitted": "awaiting RateLimit's asyncio path admitting a call to it",
        },
    }


# --- report --------------------------------------------------------------------------------


def judge(results: dict[str, Any]) -> dict[str, Any]:
    runs = results["accuracy"]
    worst = max(abs(r["error_pct"]) for r in runs)
    return {
        "accuracy": {
            "value": worst / 100,
            "target": f"every run within ±{ACCURACY_TARGET:.0%} of R·t + B",
            "passed": worst / 100 <= ACCURACY_TARGET,
        },
        "load_above_rate": {
            "value": min(r["offered_per_s"] / r["rate"] for r in runs),
            "target": ">= 2 (offered load over R, for a meaningful accuracy figure)",
            "passed": all(r["offered_per_s"] >= 2 * r["rate"] for r in runs),
        },
    }


def report(results: dict[str, Any], stdout: TextIO | None = None) -> None:
    console = Console(file=stdout or sys.stdout)
    if not console.is_terminal:
        console.width = 130
    title = f"rate limit accuracy{' (quick: figures are rough)' if results['quick'] else ''}"
    table = Table(title=title)
    for column in ("server", "R/s", "B", "t s", "offered/s", "accepted", "R·t+B",
                   "accepted/expected", "error %", "rejected", "pushback ms min/med/max"):
        table.add_column(column, justify="left" if column == "server" else "right")
    for r in results["accuracy"]:
        pushback = r["pushback_ms"]
        table.add_row(
            r["server"], f"{r['rate']:g}", str(r["burst"]), f"{r['seconds']:g}",
            f"{r['offered_per_s']:.0f}", str(r["accepted"]), f"{r['expected']:.0f}",
            f"{r['accepted_over_expected']:.3f}", f"{r['error_pct']:+.2f}", str(r["rejected"]),
            f"{pushback['min']}/{pushback['median']:g}/{pushback['max']}" if pushback else "-",
        )
    console.print(table)
    cost = Table(title="in-process cost per call")
    cost.add_column("measure")
    cost.add_column("ns/call", justify="right")
    cost.add_column("overhead ns", justify="right")
    inproc = results["in_process"]
    for name, ns in inproc["ns_per_call"].items():
        overhead = inproc["overhead_ns"].get(name)
        cost.add_row(inproc["what"][name], f"{ns:.0f}",
                     "-" if overhead is None else f"{overhead:.0f}")
    console.print(cost)
    for name, target in results["targets"].items():
        console.print(f"{mark(target['passed'], results['quick'])} {name}: "
                      f"{target['value']:.3f} (target {target['target']})")
    problems = [r for r in results["accuracy"]
                if r["other_errors"] or r["rejected_without_pushback"]]
    if problems:
        console.print(f"[red]runs with other errors or rejections without pushback: "
                      f"{[(r['server'], r['rate']) for r in problems]}[/]")
    print_footer(console, results)


# --- entry points --------------------------------------------------------------------------


def run(
    *, quick: bool = False, stdout: TextIO | None = None, output: Path | None = None
) -> dict[str, Any]:
    """Measure, print tables to ``stdout`` and return the figures.

    A full run writes them to ``benchmarks/results/rate_limit.json`` (or ``output``); a
    quick run writes only to ``output``, if given, so it never replaces full figures.
    """
    plan = QUICK if quick else FULL
    began = time.perf_counter()
    results: dict[str, Any] = {
        **header(NAME, quick, plan),
        "method": METHOD,
        "in_process": measure_in_process(plan),
        "accuracy": [],
    }
    for kind in plan.servers:
        for rate, burst in plan.limits:
            gc.collect()
            results["accuracy"].append(measure_accuracy(kind, rate, burst, plan))
    results["targets"] = judge(results)
    return finish(results, began, RESULTS, report, quick, stdout, output)


def main(argv: list[str] | None = None) -> int:
    return cli(argv, NAME, __doc__, run, RESULTS)


if __name__ == "__main__":
    sys.exit(main())
