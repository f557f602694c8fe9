"""What Prometheus metrics cost per call: the Metrics middleware on versus off.

Three clients call Get in turns, in an order that rotates every turn, so drift of the
machine touches them alike:

* ``off``: the default client chain with METRICS_ENABLED = false, to a server with no
  server middleware;
* ``listed_off``: Metrics listed first in both chains, but METRICS_ENABLED = false, so
  it leaves every chain (this should match ``off``);
* ``on``: Metrics first in the client chain and in the server stack, metrics enabled.

Reported: sequential latency medians and the median of the per-round ratios against
``off``, and the in-process cost of the chains over a constant terminal (no network), in
nanoseconds per call, for client and server together and for each side. The servers run
in their own processes. Run with ``python -m benchmarks.metrics_overhead [--quick]`` or
``manage.py bench metrics_overhead``.
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from apps.cache.protos import cache_pb2, cache_pb2_grpc
from benchmarks._common import (
    DEFAULT_CLIENT_MIDDLEWARE,
    KEY,
    METHOD,
    RESULTS_DIR,
    VALUE,
    bench_settings,
    cli,
    finish,
    header,
    print_footer,
    rotated,
    round_ratio_medians,
    server_process,
)
from resilience.conf.factory import ChainFactory
from resilience.conf.settings import Settings
from resilience.core.call import Call, CallKind
from resilience.transport.client import connect

NAME = "metrics_overhead"
RESULTS = RESULTS_DIR / f"{NAME}.json"
METRICS = "resilience.middleware.Metrics"
CLIENTS = ("off", "listed_off", "on")


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much is measured; every loop is bounded by these."""

    warmup_calls: int
    latency_rounds: int
    latency_calls: int
    inproc_number: int
    inproc_repeat: int


FULL = Plan(warmup_calls=500, latency_rounds=20, latency_calls=300,
            inproc_number=5_000, inproc_repeat=15)
QUICK = Plan(warmup_calls=30, latency_rounds=3, latency_calls=30,
             inproc_number=1000, inproc_repeat=2)


def client_settings(name: str) -> Settings:
    listed = name != "off"
    return bench_settings(
        CLIENT_MIDDLEWARE=[METRICS, *DEFAULT_CLIENT_MIDDLEWARE] if listed
        else DEFAULT_CLIENT_MIDDLEWARE,
        METRICS_ENABLED=name == "on",
    )


def server_settings(name: str) -> dict[str, Any]:
    if name == "off":
        return {"SERVER_MIDDLEWARE": [], "METRICS_ENABLED": False}
    return {"SERVER_MIDDLEWARE": [METRICS], "METRICS_ENABLED": name == "on"}


# --- measurements ------------------------------------------------------------------------


def measure_latency(gets: dict[str, Callable[[Any], Any]], request: Any, plan: Plan
                    ) -> dict[str, Any]:
    """Sequential calls, clients interleaved call by call; medians in microseconds."""
    clock = time.perf_counter_ns
    names = list(gets)
    orders = [rotated(names, by) for by in range(len(names))]

    def one_round(n: int) -> dict[str, list[int]]:
        samples: dict[str, list[int]] = {name: [] for name in names}
        for turn in range(n):
            for name in orders[turn % len(orders)]:
                get = gets[name]
                start = clock()
                get(request)
                samples[name].append(clock() - start)
        return samples

    one_round(plan.warmup_calls)
    every: dict[str, list[int]] = {name: [] for name in names}
    medians: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(plan.latency_rounds):
        for name, samples in one_round(plan.latency_calls).items():
            every[name].extend(samples)
            medians[name].append(statistics.median(samples))
    median_us = {n: statistics.median(s) / 1000 for n, s in every.items()}
    return {
        "rounds": plan.latency_rounds,
        "calls_per_round": plan.latency_calls,
        "median_us": median_us,
        "ratio_vs_off": {n: median_us[n] / median_us["off"] for n in names if n != "off"},
        "round_ratio_median": round_ratio_medians(medians, "off", names),
    }


def _chain(settings: Settings, side: str, terminal: Callable[[Call], Any]) -> Any:
    factory = ChainFactory(settings, side)  # type: ignore[arg-type]
    return factory.build(METHOD, CallKind.UNARY_UNARY, terminal, idempotent=True)


def measure_in_process(plan: Plan) -> dict[str, Any]:
    """Each client's chain plus the server stack it talks to, over a constant terminal:
    the cost of a call without the network, in ns, for both together and for each side.
    The clients take turns within every repeat and the best repeat counts, so that drift
    of a shared machine touches them alike."""
    response = cache_pb2.GetResp(value=VALUE)
    request = cache_pb2.GetReq(key=KEY)

    def terminal(call: Call) -> Any:
        return response

    def timed(name: str) -> dict[str, Callable[[], None]]:
        client = _chain(client_settings(name), "client", terminal)
        server = _chain(bench_settings(**server_settings(name)), "server", terminal)

        def client_side() -> None:
            client(Call(METHOD, CallKind.UNARY_UNARY, "client", request))

        def server_side() -> None:
            server(Call(METHOD, CallKind.UNARY_UNARY, "server", request))

        def both() -> None:
            client_side()
            server_side()

        return {"both": both, "client": client_side, "server": server_side}

    loops = {name: timed(name) for name in CLIENTS}
    best = {(name, what): float("inf") for name in CLIENTS for what in ("both", "client",
                                                                        "server")}
    for _ in range(plan.inproc_repeat):
        for (name, what) in best:
            seconds = timeit.timeit(loops[name][what], number=plan.inproc_number)
            best[name, what] = min(best[name, what], seconds / plan.inproc_number * 1e9)
    ns = {name: best[name, "both"] for name in CLIENTS}
    sides = {side: {name: best[name, side] for name in CLIENTS} for side in ("client", "server")}
    return {
        "ns_per_call": ns,
        "added_ns": {n: ns[n] - ns["off"] for n in CLIENTS if n != "off"},
        "side_ns_per_call": sides,
        "side_added_ns": {side: {n: v[n] - v["off"] for n in CLIENTS if n != "off"}
                          for side, v in sides.items()},
    }


# --- report ------------------------------------------------------------------------------


def report(results: dict[str, Any], stdout: TextIO | None = None) -> None:
    console = Console(file=stdout or sys.stdout)
    if not console.is_terminal:
        console.width = 110
    lat, inproc = results["latency"], results["in_process"]
    title = f"metrics overhead{' (quick: figures are rough)' if results['quick'] else ''}"
    table = Table(title=title)
    table.add_column("measure")
    for name in CLIENTS:
        table.add_column(name, justify="right")

    def row(label: str, values: dict[str, float], fmt: str) -> None:
        table.add_row(label, *[format(values[n], fmt) if n in values else "-" for n in CLIENTS])

    row("latency median (µs)", lat["median_us"], ".1f")
    row("latency ratio vs off", lat["ratio_vs_off"], ".3f")
    row("  median of round ratios", lat["round_ratio_median"], ".3f")
    row("in-process ns/call (client + server)", inproc["ns_per_call"], ".0f")
    row("  added by metrics (ns)", inproc["added_ns"], ".0f")
    for side in ("client", "server"):
        row(f"in-process ns/call, {side} side", inproc["side_ns_per_call"][side], ".0f")
        row("  added by metrics (ns)", inproc["side_added_ns"][side], ".0f")
    console.print(table)
    print_footer(console, results)


# --- entry points ------------------------------------------------------------------------


def run(
    *, quick: bool = False, stdout: TextIO | None = None, output: Path | None = None
) -> dict[str, Any]:
    """Measure, print a table to ``stdout`` and return the figures.

    A full run writes them to ``benchmarks/results/metrics_overhead.json`` (or ``output``);
    a quick run writes only to ``output``, if given.
    """
    plan = QUICK if quick else FULL
    began = time.perf_counter()
    request = cache_pb2.GetReq(key=KEY)
    results: dict[str, Any] = {
        **header(NAME, quick, plan, "prometheus-client"),
        "method": METHOD,
        "client_chain": [METRICS, *DEFAULT_CLIENT_MIDDLEWARE],
        "server_stack": [METRICS],
    }
    results["in_process"] = measure_in_process(plan)
    with server_process(settings=server_settings("off")) as off_address, \
            server_process(settings=server_settings("listed_off")) as listed_address, \
            server_process(settings=server_settings("on")) as on_address:
        addresses = {"off": off_address, "listed_off": listed_address, "on": on_address}
        channels = {n: connect(addresses[n], client_settings(n)) for n in CLIENTS}
        try:
            gets = {n: cache_pb2_grpc.CacheServiceStub(c).Get for n, c in channels.items()}
            for name, channel in channels.items():
                cache_pb2_grpc.CacheServiceStub(channel).Store(
                    cache_pb2.StoreReq(key=KEY, value=VALUE), timeout=10)
                chain = [type(m).__name__ for m in channel.middleware[METHOD]]
                if (chain[0] == "Metrics") != (name == "on"):
                    raise RuntimeError(f"client '{name}' built the chain {chain}")
            gc.collect()
            results["latency"] = measure_latency(gets, request, plan)
        finally:
            for channel in channels.values():
                channel.close()
    return finish(results, began, RESULTS, report, quick, stdout, output)


def main(argv: list[str] | None = None) -> int:
    return cli(argv, NAME, __doc__, run, RESULTS)


if __name__ == "__main__":
    sys.exit(main())
