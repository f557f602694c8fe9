"""What hedging does to tail latency, and what it costs in extra attempts.

A server in a separate process (grpc.aio) delays a random 5% of Get attempts by 500 ms,
as a slow replica or a stop-the-world pause would. Four client threads call Get through a sync
``connect()`` channel: with no client middleware; with ``Hedging`` at a delay too long to
fire (its own cost, and the p95 of the calls the fault did not touch); and with
``Hedging`` whose delay is that p95. For each
it reports p50/p95/p99, p99/p50, and the attempts the server received per call, and it
checks the acceptance target: client p99 at most 1.5x p50 with hedging.

A hedged call whose first attempt was delayed takes ``delay`` plus one more round trip, so
p99 (which falls among those 5%) is at least about p95 + p50: the target is met only when
the latency spread is wide compared with the round trip, and the report says when not.

Run with ``python -m benchmarks.hedging [--quick]`` or ``manage.py bench hedging``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

import grpc
from rich.console import Console
from rich.table import Table

from apps.cache.protos import cache_pb2, cache_pb2_grpc
from apps.cache.servicer import AsyncCacheServicer
from benchmarks._common import (
    METHOD,
    RESULTS_DIR,
    ServerProcess,
    bench_settings,
    cli,
    finish,
    machine,
    mark,
    percentile,
    print_footer,
    spawned_server,
)
from resilience.log import configure_logging
from resilience.transport.client import connect

NAME = "hedging"
RESULTS = RESULTS_DIR / f"{NAME}.json"
SLOW_SHARE = 0.05
SLOW_SECONDS = 0.5
SEED = 1
P99_OVER_P50_MAX = 1.5
HEDGING = "resilience.middleware.Hedging"


@dataclasses.dataclass(frozen=True)
class Plan:
    calls: int  # per configuration
    threads: int
    warmup_calls: int


FULL = Plan(calls=1200, threads=4, warmup_calls=200)
QUICK = Plan(calls=120, threads=4, warmup_calls=20)


# --- the server, in its own process ------------------------------------------------------


class SlowSometimes(AsyncCacheServicer):
    """The async cache servicer whose Get answers at once, except a random ``SLOW_SHARE``
    of attempts that first wait ``SLOW_SECONDS`` (and stop waiting when the client
    cancels); ``control`` answers "stats" and "reset" from the parent."""

    def __init__(self, settings: Any, seed: int = SEED) -> None:
        super().__init__(settings)
        self.rng = random.Random(seed)
        self.stats = {"attempts": 0, "delayed": 0, "cancelled": 0}

    async def Get(self, request: Any, context: Any) -> Any:
        self.stats["attempts"] += 1
        if self.rng.random() < SLOW_SHARE:
            self.stats["delayed"] += 1
            try:
                await asyncio.sleep(SLOW_SECONDS)
            except asyncio.CancelledError:
                self.stats["cancelled"] += 1
                raise
        return cache_pb2.GetResp(value=b"v")

    def control(self, command: str) -> Any:
        if command == "stats":
            return dict(self.stats)
        if command == "reset":
            self.stats = dict.fromkeys(self.stats, 0)
            return "ok"
        raise ValueError(f"unknown command {command!r}")


def slow_server() -> contextlib.AbstractContextManager[ServerProcess]:
    """The slow-sometimes server (grpc.aio, no server middleware) in a spawned process."""
    return spawned_server("aio", servicer="benchmarks.hedging.SlowSometimes")


# --- measurement -------------------------------------------------------------------------


def _latencies(get: Any, calls: int, threads: int) -> tuple[list[float], int]:
    """Seconds per call for ``calls`` calls shared by ``threads`` threads, and the errors."""
    request = cache_pb2.GetReq(key="k")
    samples: list[float] = []
    errors = [0]
    lock = threading.Lock()
    left = [calls]

    def worker() -> None:
        clock = time.perf_counter
        mine: list[float] = []
        while True:
            with lock:
                if left[0] == 0:
                    break
                left[0] -= 1
            start = clock()
            try:
                get(request, timeout=5)
            except grpc.RpcError:
                with lock:
                    errors[0] += 1
                continue
            mine.append(clock() - start)
        with lock:
            samples.extend(mine)

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(120)
    if any(thread.is_alive() for thread in pool):
        raise RuntimeError("benchmark callers did not finish")
    return samples, errors[0]


def _summary(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    p50, p95, p99 = (percentile(ms, p) for p in (50, 95, 99))  # type: ignore[arg-type]
    return {"p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "p99_over_p50": p99 / p50}


def measure(server: ServerProcess, middleware: list[str], options: dict[str, Any],
            plan: Plan) -> tuple[dict[str, Any], list[float]]:
    """The figures of one configuration, and its latencies in seconds."""
    settings = bench_settings(CLIENT_MIDDLEWARE=middleware, CLIENT_OPTIONS=options,
                              LOG_LEVEL="WARNING")
    with connect(server.address, settings) as channel:
        get = cache_pb2_grpc.CacheServiceStub(channel).Get
        _latencies(get, plan.warmup_calls, plan.threads)
        server.ask("reset")
        start = time.perf_counter()
        samples, errors = _latencies(get, plan.calls, plan.threads)
        elapsed = time.perf_counter() - start
        time.sleep(0.05)  # let the server count the last cancellations
        stats = server.ask("stats")
        used = channel.middleware.get(METHOD, [])
        hedges = sum(getattr(m, "hedges", 0) for m in used)
    return {
        **_summary(samples),
        "calls": plan.calls,
        "errors": errors,
        "elapsed_s": elapsed,
        "server": stats,
        "attempts_per_call": stats["attempts"] / plan.calls,
        "hedges_sent": hedges,
    }, samples


def run(*, quick: bool = False, stdout: TextIO | None = None,
        output: Path | None = None) -> dict[str, Any]:
    plan = QUICK if quick else FULL
    configure_logging("WARNING")
    began = time.perf_counter()
    with slow_server() as server:
        baseline, _ = measure(server, [], {}, plan)
        # The delay: p95 of the calls the fault left alone (over all calls, p95 lands on the
        # edge of the delayed 5%, about 500 ms), measured through the same hedging path
        # with a delay too long to ever fire, so that the path's own cost is included.
        calibration, samples = measure(server, [HEDGING], {"Hedging": {"delay": 2.0}}, plan)
        delay_ms = round(percentile([s * 1000 for s in samples if s < SLOW_SECONDS / 2], 95), 2)
        hedged, _ = measure(server, [HEDGING], {"Hedging": {"delay": delay_ms / 1000}}, plan)
    ratio = hedged["p99_over_p50"]
    results: dict[str, Any] = {
        "benchmark": NAME,
        "quick": quick,
        "fault": {"share": SLOW_SHARE, "delay_s": SLOW_SECONDS},
        "plan": dataclasses.asdict(plan),
        "hedging_delay_ms": delay_ms,
        "without_hedging": baseline,
        "hedging_never_fires": calibration,
        "with_hedging": hedged,
        "targets": {
            "p99_over_p50_with_hedging": {
                "value": ratio, "target": f"<= {P99_OVER_P50_MAX}",
                "passed": ratio <= P99_OVER_P50_MAX,
            },
        },
        "machine": machine(),
    }
    return finish(results, began, RESULTS, report, quick, stdout, output)


def report(results: dict[str, Any], stdout: TextIO | None = None) -> None:
    console = Console(file=stdout or sys.stdout)
    if not console.is_terminal:
        console.width = 120
    table = Table(title=f"hedging: {results['fault']['share']:.0%} of attempts delayed "
                        f"{results['fault']['delay_s'] * 1000:.0f} ms"
                        + (" (quick run)" if results["quick"] else ""))
    for column in ("client", "p50 ms", "p95 ms", "p99 ms", "p99/p50", "attempts/call",
                   "cancelled on server", "errors"):
        table.add_column(column, justify="left" if column == "client" else "right")
    delay = results["hedging_delay_ms"]
    for label, key in (("no hedging", "without_hedging"),
                       ("Hedging(delay=2 s): never fires", "hedging_never_fires"),
                       (f"Hedging(delay={delay:g} ms)", "with_hedging")):
        r = results[key]
        table.add_row(label, f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}", f"{r['p99_ms']:.2f}",
                      f"{r['p99_over_p50']:.2f}", f"{r['attempts_per_call']:.3f}",
                      str(r["server"]["cancelled"]), str(r["errors"]))
    console.print(table)
    target = results["targets"]["p99_over_p50_with_hedging"]
    console.print(f"{mark(target['passed'], results['quick'])} p99/p50 with hedging: "
                  f"{target['value']:.2f} (target {target['target']})")
    print_footer(console, results)


def main(argv: list[str] | None = None) -> int:
    return cli(argv, NAME, __doc__, run, RESULTS)


if __name__ == "__main__":
    sys.exit(main())
