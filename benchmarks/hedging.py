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

import argparse
import asyncio
import contextlib
import dataclasses
import multiprocessing
import random
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import grpc
from rich.console import Console
from rich.table import Table

from apps.cache.protos import cache_pb2, cache_pb2_grpc
from benchmarks._common import (
    METHOD,
    RESULTS_DIR,
    SERVER_MAX_LIFETIME_S,
    SERVER_START_TIMEOUT_S,
    bench_settings,
    machine,
    mark,
    percentile,
    print_footer,
    record,
)
from resilience.log import configure_logging
from resilience.transport.client import connect

NAME = "hedging"
RESULTS = RESULTS_DIR / f"{NAME}.json"
SLOW_SHARE = 0.05
SLOW_SECONDS = 0.5
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


class _SlowSometimes(cache_pb2_grpc.CacheServiceServicer):
    """Get answers at once, except a random ``SLOW_SHARE`` of attempts that first wait
    ``SLOW_SECONDS`` (and stop waiting when the client cancels)."""

    def __init__(self, seed: int) -> None:
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


def _serve(conn: Any, seed: int) -> None:
    asyncio.run(_serve_aio(conn, seed))


async def _serve_aio(conn: Any, seed: int) -> None:
    """Child process: serve until "stop" (or EOF); answer "stats" and "reset" meanwhile."""
    try:
        server = grpc.aio.server()
        servicer = _SlowSometimes(seed)
        cache_pb2_grpc.add_CacheServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(conn.fileno(), readable.set)
    conn.send(("ok", f"127.0.0.1:{port}"))
    end = loop.time() + SERVER_MAX_LIFETIME_S
    try:
        while loop.time() < end:
            readable.clear()
            if not conn.poll():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(readable.wait(), end - loop.time())
                continue
            try:
                command = conn.recv()
            except EOFError:
                return
            if command == "stats":
                conn.send(dict(servicer.stats))
            elif command == "reset":
                servicer.stats = dict.fromkeys(servicer.stats, 0)
                conn.send("ok")
            else:
                return
    finally:
        loop.remove_reader(conn.fileno())
        await server.stop(grace=0)


class ServerProcess:
    """The slow-sometimes server in a spawned process, and a line to ask it for counts."""

    def __init__(self, conn: Any, address: str) -> None:
        self.conn = conn
        self.address = address

    def ask(self, command: str) -> Any:
        self.conn.send(command)
        if not self.conn.poll(10):
            raise RuntimeError(f"benchmark server did not answer {command!r}")
        return self.conn.recv()


@contextlib.contextmanager
def server_process(seed: int = 1) -> Iterator[ServerProcess]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(child, seed), name="bench-hedging", daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(SERVER_START_TIMEOUT_S):
            raise RuntimeError("benchmark server did not start")
        try:
            status, detail = parent.recv()
        except EOFError:
            status, detail = "error", f"the server process exited ({proc.exitcode})"
        if status != "ok":
            raise RuntimeError(f"benchmark server failed to start:\n{detail}")
        yield ServerProcess(parent, detail)
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        parent.close()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


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
    with server_process() as server:
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
        "elapsed_s": time.perf_counter() - began,
    }
    record(results, RESULTS, quick, output)
    report(results, stdout)
    return results


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
    console.print(f"{mark(target['passed'])} p99/p50 with hedging: {target['value']:.2f} "
                  f"(target {target['target']})")
    print_footer(console, results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--output", type=Path, help="write the JSON figures here")
    args = parser.parse_args(argv)
    run(quick=args.quick, output=args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
