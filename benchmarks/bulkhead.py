"""Get latency while 50 slow reports (Dump) flood the sync server, with and without a Bulkhead.

The article's 舱壁隔离: slow reports must not starve fast updates. Two real sync servers
run in processes of their own, both with ``SERVER_MAX_WORKERS = 50`` and a cache servicer
whose Dump is slow (it sleeps between items, like a report query):

* ``plain``: no server middleware;
* ``bulkhead``: ``Bulkhead`` with groups reports = [Dump] and updates = [Get, Store],
  reports limited to 10 calls in flight on 10 threads of their own, ``max_wait = 0``.

Against each, one thread calls Get back to back, first alone and then while 50 client
threads keep a Dump each in flight (a rejected one tries again after a short pause). The
benchmark reports Get's p50/p99/max latency in each of the four runs, and what the flood
got done. Run with ``python -m benchmarks.bulkhead [--quick]`` or ``manage.py bench bulkhead``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import grpc
from rich.console import Console
from rich.table import Table

from apps.cache.protos import cache_pb2, cache_pb2_grpc
from apps.cache.servicer import CacheServicer
from benchmarks._common import (
    KEY,
    RESULTS_DIR,
    VALUE,
    cli,
    finish,
    header,
    percentile,
    print_footer,
    server_process,
)

NAME = "bulkhead"
RESULTS = RESULTS_DIR / f"{NAME}.json"
DUMP = "cache.CacheService/Dump"
SERVER_MAX_WORKERS = 50
FLOOD = 50
REPORTS = 10
BULKHEAD_OPTIONS = {
    "groups": {"reports": [DUMP], "updates": ["cache.CacheService/Get",
                                              "cache.CacheService/Store"]},
    "limits": {"reports": REPORTS},
    "max_concurrent": 100,
    "max_wait": 0.0,
    "executor_threads": {"reports": REPORTS},
}
SERVERS: dict[str, dict[str, Any]] = {
    "plain": {"SERVER_MIDDLEWARE": []},
    "bulkhead": {
        "SERVER_MIDDLEWARE": ["resilience.middleware.Bulkhead"],
        "SERVER_OPTIONS": {"Bulkhead": BULKHEAD_OPTIONS},
    },
}
GET_TIMEOUT_S = 5.0
RETRY_PAUSE_S = 0.1  # a rejected Dump tries again after this


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much to measure; every loop in the benchmark is bounded by these numbers."""

    alone_seconds: float
    flood_seconds: float
    ramp_seconds: float  # flood running before Gets are timed
    dump_items: int
    dump_delay: float  # seconds per item: a Dump takes dump_items * dump_delay
    max_gets: int


FULL = Plan(alone_seconds=3.0, flood_seconds=10.0, ramp_seconds=0.5, dump_items=10,
            dump_delay=0.15, max_gets=50_000)
QUICK = Plan(alone_seconds=0.3, flood_seconds=1.0, ramp_seconds=0.2, dump_items=5,
             dump_delay=0.05, max_gets=2000)


# --- the server, in its own process ------------------------------------------------------


class SlowReports(CacheServicer):
    """The cache servicer with a Dump that takes ``items * delay`` seconds, from the
    settings ``BENCH_DUMP_ITEMS`` and ``BENCH_DUMP_DELAY``."""

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.items = settings.get("BENCH_DUMP_ITEMS")
        self.delay = settings.get("BENCH_DUMP_DELAY")

    def Dump(self, request: cache_pb2.DumpReq, context: grpc.ServicerContext
             ) -> Iterator[cache_pb2.DumpItem]:
        for n in range(self.items):
            time.sleep(self.delay)
            yield cache_pb2.DumpItem(key=f"k{n}", val=b"v")


def server(name: str, plan: Plan) -> contextlib.AbstractContextManager[str]:
    """The server ``name``, serving ``SlowReports``, in a spawned process; its address."""
    return server_process("sync", settings={
        **SERVERS[name], "SERVER_MAX_WORKERS": SERVER_MAX_WORKERS,
        "BENCH_DUMP_ITEMS": plan.dump_items, "BENCH_DUMP_DELAY": plan.dump_delay,
    }, servicer="benchmarks.bulkhead.SlowReports")


# --- the clients -------------------------------------------------------------------------


def _channel(address: str) -> grpc.Channel:
    """A channel with a connection of its own: the flood and the Gets are other clients."""
    return grpc.insecure_channel(address, options=[
        ("grpc.enable_retries", 0), ("grpc.use_local_subchannel_pool", 1),
    ])


class Flood:
    """``FLOOD`` threads, each keeping one Dump in flight until ``stop``."""

    def __init__(self, address: str) -> None:
        self.outcomes: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._channel = _channel(address)
        stub = cache_pb2_grpc.CacheServiceStub(self._channel)
        self._threads = [threading.Thread(target=self._loop, args=(stub,), daemon=True)
                         for _ in range(FLOOD)]
        for thread in self._threads:
            thread.start()

    def _loop(self, stub: cache_pb2_grpc.CacheServiceStub) -> None:
        while not self._stop.is_set():
            try:
                for _ in stub.Dump(cache_pb2.DumpReq(), timeout=30):
                    pass
                outcome = "completed"
            except grpc.RpcError as exc:
                outcome = exc.code().name
            with self._lock:
                self.outcomes[outcome] += 1
            if outcome != "completed":
                self._stop.wait(RETRY_PAUSE_S)

    def stop(self) -> dict[str, int]:
        """Stop starting Dumps, wait for those in flight; what the flood got done."""
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        self._channel.close()
        return dict(self.outcomes)


def time_gets(address: str, seconds: float, max_calls: int) -> dict[str, Any]:
    """Get back to back for ``seconds`` (at most ``max_calls``): latency figures in µs."""
    latencies: list[int] = []
    errors: Counter[str] = Counter()
    with _channel(address) as channel:
        get = cache_pb2_grpc.CacheServiceStub(channel).Get
        request = cache_pb2.GetReq(key=KEY)
        get(request, timeout=GET_TIMEOUT_S)  # connected before the clock starts
        end = time.perf_counter() + seconds
        while time.perf_counter() < end and len(latencies) + sum(errors.values()) < max_calls:
            start = time.perf_counter_ns()
            try:
                get(request, timeout=GET_TIMEOUT_S)
            except grpc.RpcError as exc:
                errors[exc.code().name] += 1
                continue
            latencies.append(time.perf_counter_ns() - start)
    us = [n / 1000 for n in latencies]
    return {
        "calls": len(latencies),
        "errors": dict(errors),
        "p50_us": statistics.median(us) if us else None,
        "p99_us": percentile(latencies, 99) / 1000 if us else None,
        "max_us": max(us) if us else None,
    }


def measure(name: str, plan: Plan) -> dict[str, Any]:
    """Gets alone, then Gets during the flood, against the server ``name``."""
    with server(name, plan) as address:
        with _channel(address) as channel:
            cache_pb2_grpc.CacheServiceStub(channel).Store(
                cache_pb2.StoreReq(key=KEY, value=VALUE), timeout=10)
        alone = time_gets(address, plan.alone_seconds, plan.max_gets)
        flood = Flood(address)
        try:
            time.sleep(plan.ramp_seconds)
            during = time_gets(address, plan.flood_seconds, plan.max_gets)
        finally:
            dumps = flood.stop()
    return {"alone": alone, "flood": during, "dumps": dumps}


# --- report ------------------------------------------------------------------------------


def judge(results: dict[str, Any]) -> dict[str, Any]:
    """Get p99 during the flood against Get p99 alone on the same server."""
    ratios = {}
    for name, runs in results["servers"].items():
        alone, flood = runs["alone"]["p99_us"], runs["flood"]["p99_us"]
        ratios[name] = flood / alone if alone and flood else None
    return {"p99_flood_vs_alone": ratios}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value / 1000:.2f}"


def report(results: dict[str, Any], stdout: TextIO | None = None) -> None:
    console = Console(file=stdout or sys.stdout)
    if not console.is_terminal:
        console.width = 130
    quick = " (quick: figures are rough)" if results["quick"] else ""
    title = f"bulkhead: Get during a Dump flood{quick}"
    table = Table(title=title)
    for column in ("server", "run", "Gets", "p50 ms", "p99 ms", "max ms", "Get errors",
                   "Dumps (flood)"):
        table.add_column(column, justify="left" if column in ("server", "run") else "right")
    for name, runs in results["servers"].items():
        for run_name in ("alone", "flood"):
            figures = runs[run_name]
            dumps = ", ".join(f"{k} {v}" for k, v in sorted(runs["dumps"].items()))
            table.add_row(
                name, run_name, str(figures["calls"]), _ms(figures["p50_us"]),
                _ms(figures["p99_us"]), _ms(figures["max_us"]),
                ", ".join(f"{k} {v}" for k, v in figures["errors"].items()) or "0",
                dumps if run_name == "flood" else "",
            )
    console.print(table)
    for name, ratio in results["judgement"]["p99_flood_vs_alone"].items():
        shown = "-" if ratio is None else f"{ratio:.1f}x"
        console.print(f"{name}: Get p99 during the flood is {shown} its p99 alone")
    plan = results["plan"]
    console.print(
        f"sync servers with SERVER_MAX_WORKERS={SERVER_MAX_WORKERS}; {FLOOD} flood threads, "
        f"each Dump {plan['dump_items'] * plan['dump_delay']:.2f}s; bulkhead: reports "
        f"{REPORTS} in flight on {REPORTS} threads, max_wait 0"
    )
    print_footer(console, results)


def run(
    *, quick: bool = False, stdout: TextIO | None = None, output: Path | None = None
) -> dict[str, Any]:
    """Measure, print a table to ``stdout`` and return the figures.

    A full run writes them to ``benchmarks/results/bulkhead.json`` (or ``output``); a quick
    run writes only to ``output``, if given, so it never replaces full figures.
    """
    plan = QUICK if quick else FULL
    began = time.perf_counter()
    results: dict[str, Any] = {
        **header(NAME, quick, plan),
        "server_max_workers": SERVER_MAX_WORKERS,
        "flood_threads": FLOOD,
        "bulkhead_options": BULKHEAD_OPTIONS,
        "servers": {name: measure(name, plan) for name in SERVERS},
    }
    results["judgement"] = judge(results)
    return finish(results, began, RESULTS, report, quick, stdout, output)


def main(argv: list[str] | None = None) -> int:
    return cli(argv, NAME, __doc__, run, RESULTS)


if __name__ == "__main__":
    sys.exit(main())
