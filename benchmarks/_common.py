"""What the benchmarks share: settings, the server process, statistics, targets, output.

Not a benchmark itself (its name starts with ``_``, so ``manage.py bench`` skips it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import importlib
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

import grpc
from rich.console import Console
from rich.table import Table

from resilience.conf.settings import Settings

if TYPE_CHECKING:
    from resilience.apps.registry import Apps

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ROOT = RESULTS_DIR.parents[1]
METHOD = "cache.CacheService/Get"
KEY = "bench-key"
VALUE = b"v" * 64
STREAM_METHOD = "cache.CacheService/Dump"
# Stored besides KEY before the measurements, so that a Dump streams a few items.
STREAM_KEYS = tuple(f"bench-dump-{n}" for n in range(4))
DEFAULT_CLIENT_MIDDLEWARE = [
    "resilience.middleware.Retry",
    "resilience.middleware.Timeout",
    "resilience.middleware.CircuitBreaker",
]
DEFAULT_CHAIN_NAMES = ["Retry", "Timeout", "CircuitBreaker"]
LATENCY_RATIO_MAX = 1.03
THROUGHPUT_RATIO_MIN = 0.97
# The server process never outlives this, even if the parent dies without telling it.
SERVER_MAX_LIFETIME_S = 900.0
SERVER_START_TIMEOUT_S = 60.0
# The settings a benchmark server starts from; server_process(settings=...) goes over them.
SERVER_DEFAULTS: dict[str, Any] = {"SERVER_MIDDLEWARE": [], "LOG_LEVEL": "WARNING"}

ServerKind = Literal["sync", "aio"]

@dataclasses.dataclass(frozen=True)
class OverheadPlan:
    """How much an overhead benchmark measures; every loop in it is bounded by these."""

    warmup_calls: int
    latency_rounds: int
    latency_calls: int
    inproc_number: int
    inproc_repeat: int
    throughput_rounds: int
    throughput_seconds: float
    throughput_workers: int  # threads (sync) or tasks (asyncio) calling at once
    throughput_max_calls: int  # per worker per measurement, a bound besides the duration



def bench_settings(**values: Any) -> Settings:
    """Settings built in code, over the documented defaults, with the cache app."""
    return Settings({"INSTALLED_APPS": ["apps.cache"], **values}, env="benchmark",
                    path=Path("<bench>"))


# --- the server, in its own process ------------------------------------------------------


def _servicer_factory(path: str) -> Callable[[Settings], Any]:
    module, _, name = path.rpartition(".")
    factory: Callable[[Settings], Any] = getattr(importlib.import_module(module), name)
    return factory


def _apps(settings: Settings, servicer: str | None, made: list[Any]) -> Apps:
    """The cache app, with the servicer made by the factory at ``servicer`` if given;
    each servicer made is appended to ``made``."""
    from resilience.apps.config import AppConfig
    from resilience.apps.registry import Apps, load_apps

    apps = load_apps(settings.INSTALLED_APPS)
    if servicer is None:
        return apps
    factory = _servicer_factory(servicer)

    def make(settings: Settings) -> Any:
        made.append(factory(settings))
        return made[-1]

    from apps.cache.apps import CacheConfig

    config = AppConfig()
    config.services = tuple(  # type: ignore[misc]
        dataclasses.replace(service, servicer=make, async_servicer=make)
        for service in CacheConfig.services
    )
    return Apps([config])


def _answer(conn: Any, made: list[Any]) -> bool:
    """Read a message; False on "stop" or at EOF (the parent has gone), else send what the
    servicer's ``control(message)`` returns (None without one) and return True."""
    try:
        command = conn.recv()
    except EOFError:
        return False
    if command == "stop":
        return False
    control = getattr(made[0], "control", None) if made else None
    conn.send(control(command) if control is not None else None)
    return True


def _serve(
    conn: Any, kind: ServerKind, values: dict[str, Any], servicer: str | None
) -> None:
    """Child process: serve until told to "stop", answering any other message with the
    servicer's ``control(message)``.

    ``kind`` is ``"sync"`` (``Server``, grpcio with a thread pool) or ``"aio"``
    (``AioServer`` on grpc.aio, built inside the event loop that runs it). The settings are
    ``values`` over no server middleware and ``LOG_LEVEL = "WARNING"``; the services are the
    cache app's, with the servicer made by the factory at the dotted path ``servicer``
    (called with the settings) if given.
    """
    if kind == "aio":
        asyncio.run(_serve_aio(conn, values, servicer))
        return
    made: list[Any] = []
    try:
        from resilience.log import configure_logging
        from resilience.transport.serving import Server

        settings = bench_settings(**{**SERVER_DEFAULTS, **values})
        configure_logging(settings.LOG_LEVEL)
        server = Server(settings, _apps(settings, servicer, made), "127.0.0.1:0")
        server.start()
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise
    try:
        conn.send(("ok", server.address))
        # Ends on "stop", at EOF when the parent has gone, or at the lifetime bound.
        end = time.monotonic() + SERVER_MAX_LIFETIME_S
        while conn.poll(max(0.0, end - time.monotonic())) and _answer(conn, made):
            pass
    finally:
        server.stop(grace=0)


async def _serve_aio(conn: Any, values: dict[str, Any], servicer: str | None) -> None:
    made: list[Any] = []
    try:
        from resilience.log import configure_logging
        from resilience.transport.aio_serving import AioServer

        settings = bench_settings(**{**SERVER_DEFAULTS, "ASYNCIO": True, **values})
        configure_logging(settings.LOG_LEVEL)
        server = AioServer(settings, _apps(settings, servicer, made), "127.0.0.1:0")
        await server.start()
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    try:
        conn.send(("ok", server.address))
        # Readable on a message, or at EOF when the parent has gone; bounded by the lifetime.
        loop.add_reader(conn.fileno(), readable.set)
        end = loop.time() + SERVER_MAX_LIFETIME_S
        while loop.time() < end:
            readable.clear()
            if not conn.poll():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(readable.wait(), end - loop.time())
                continue
            if not _answer(conn, made):
                return
    finally:
        with contextlib.suppress(Exception):
            loop.remove_reader(conn.fileno())
        await server.stop(grace=0)


@dataclasses.dataclass(frozen=True)
class ServerProcess:
    """A benchmark server in a spawned process: its address, and a line to its servicer."""

    address: str
    conn: Any

    def ask(self, command: str, timeout: float = 10.0) -> Any:
        """Send ``command``; the servicer's ``control(command)``, from the server process."""
        self.conn.send(command)
        if not self.conn.poll(timeout):
            raise RuntimeError(f"benchmark server did not answer {command!r}")
        return self.conn.recv()


@contextlib.contextmanager
def spawned_server(
    kind: ServerKind = "sync", *, settings: dict[str, Any] | None = None,
    servicer: str | None = None,
) -> Iterator[ServerProcess]:
    """A cache server in a spawned process on a loopback port.

    ``settings``: setting values over the benchmark defaults (no server middleware,
    ``LOG_LEVEL = "WARNING"``, and ``ASYNCIO`` for ``"aio"``). ``servicer``: the dotted path
    of a module-level factory, ``f(settings) -> servicer`` (sync or async as ``kind``),
    whose servicer replaces the cache app's; if it has ``control(command)``,
    ``ServerProcess.ask`` gets its answers (on the event loop for ``"aio"``, on the main
    thread, beside the serving threads, for ``"sync"``).
    """
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(child, kind, dict(settings or {}), servicer),
                       name="bench-server", daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(SERVER_START_TIMEOUT_S):
            raise RuntimeError(f"benchmark server did not start in {SERVER_START_TIMEOUT_S:g}s")
        try:
            status, detail = parent.recv()
        except EOFError:
            status, detail = "error", f"the server process exited ({proc.exitcode})"
        if status != "ok":
            raise RuntimeError(f"benchmark server failed to start:\n{detail}")
        yield ServerProcess(detail, parent)
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        parent.close()
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


@contextlib.contextmanager
def server_process(
    kind: ServerKind = "sync", *, settings: dict[str, Any] | None = None,
    servicer: str | None = None,
) -> Iterator[str]:
    """``spawned_server``, yielding only the address."""
    with spawned_server(kind, settings=settings, servicer=servicer) as server:
        yield server.address


# --- statistics --------------------------------------------------------------------------


def rotated(names: list[str], by: int) -> list[str]:
    by %= len(names)
    return names[by:] + names[:by]


def interleaved_round(
    clients: dict[str, Callable[[Any], Any]], request: Any, n: int
) -> tuple[dict[str, list[int]], dict[str, int]]:
    """``n`` turns in which every client makes one call, in an order that rotates each
    turn, so drift on any time scale touches every client alike; per-call latencies (ns)
    and client CPU (ns) per client. The CPU clock is read outside the timed window."""
    clock = time.perf_counter_ns
    cpu_clock = time.process_time_ns
    names = list(clients)
    samples: dict[str, list[int]] = {name: [] for name in names}
    cpu = dict.fromkeys(names, 0)
    orders = [[(name, clients[name], samples[name].append) for name in rotated(names, by)]
              for by in range(len(names))]
    for turn in range(n):
        for name, get, append in orders[turn % len(orders)]:
            cpu_start = cpu_clock()
            start = clock()
            get(request)
            append(clock() - start)
            cpu[name] += cpu_clock() - cpu_start
    return samples, cpu


async def ainterleaved_round(
    clients: dict[str, Callable[[Any], Awaitable[Any]]], request: Any, n: int
) -> tuple[dict[str, list[int]], dict[str, int]]:
    """``interleaved_round`` for grpc.aio clients, awaited one call at a time on the loop."""
    clock = time.perf_counter_ns
    cpu_clock = time.process_time_ns
    names = list(clients)
    samples: dict[str, list[int]] = {name: [] for name in names}
    cpu = dict.fromkeys(names, 0)
    orders = [[(name, clients[name], samples[name].append) for name in rotated(names, by)]
              for by in range(len(names))]
    for turn in range(n):
        for name, get, append in orders[turn % len(orders)]:
            cpu_start = cpu_clock()
            start = clock()
            await get(request)
            append(clock() - start)
            cpu[name] += cpu_clock() - cpu_start
    return samples, cpu


def percentile(samples: list[int], p: float) -> float:
    ordered = sorted(samples)
    return float(ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))])


def round_ratio_medians(
    per_round: dict[str, list[float]], base: str, names: list[str]
) -> dict[str, float]:
    """For each name but ``base``, the median over rounds of its figure / base's figure."""
    return {
        n: statistics.median(
            v / b for v, b in zip(per_round[n], per_round[base], strict=True)
        )
        for n in names
        if n != base
    }


def latency_figures(
    samples: dict[str, list[int]], round_medians: dict[str, list[float]],
    cpu: dict[str, int], base: str = "bare",
) -> dict[str, Any]:
    """Per client, from per-call latencies and client CPU (ns) and per-round medians: the
    median, p90, p99 and CPU per call in µs, and the ratio to ``base`` of the medians and
    the median of the per-round ratios."""
    median_us = {n: statistics.median(s) / 1000 for n, s in samples.items()}
    names = list(samples)
    return {
        "median_us": median_us,
        "p90_us": {n: percentile(s, 90) / 1000 for n, s in samples.items()},
        "p99_us": {n: percentile(s, 99) / 1000 for n, s in samples.items()},
        "client_cpu_us_per_call": {n: c / 1000 / len(samples[n]) for n, c in cpu.items()},
        "ratio": {n: median_us[n] / median_us[base] for n in names if n != base},
        "round_ratio_median": round_ratio_medians(round_medians, base, names),
    }


# --- targets and report ------------------------------------------------------------------


def ratio_targets(
    latency: float, throughput: float, latency_with_deadline: float,
    throughput_with_deadline: float,
) -> dict[str, Any]:
    """The four ratio targets, each with its figure and whether it was met."""
    return {
        "latency_ratio": {
            "value": latency, "target": f"<= {LATENCY_RATIO_MAX}",
            "passed": latency <= LATENCY_RATIO_MAX,
        },
        "throughput_ratio": {
            "value": throughput, "target": f">= {THROUGHPUT_RATIO_MIN}",
            "passed": throughput >= THROUGHPUT_RATIO_MIN,
        },
        "latency_ratio_vs_bare_with_deadline": {
            "value": latency_with_deadline, "target": f"<= {LATENCY_RATIO_MAX}",
            "passed": latency_with_deadline <= LATENCY_RATIO_MAX,
        },
        "throughput_ratio_vs_bare_with_deadline": {
            "value": throughput_with_deadline, "target": f">= {THROUGHPUT_RATIO_MIN}",
            "passed": throughput_with_deadline >= THROUGHPUT_RATIO_MIN,
        },
    }


def machine(*dists: str) -> dict[str, Any]:
    """The machine and the versions that matter; ``dists`` adds distributions' versions."""
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "?"

    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(affinity) if affinity is not None else os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "grpcio": grpc.__version__,
        **{dist: version(dist) for dist in dists},
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def mark(passed: bool, quick: bool = False) -> str:
    """How a target's line starts. FAIL only where it is enforced, in a full run (the exit
    status is 1 then); a quick run's figures are rough, so a target it misses is a "miss"."""
    if passed:
        return "[green]pass[/]"
    return "[yellow]miss[/]" if quick else "[red]FAIL[/]"


def print_targets(console: Console, targets: dict[str, Any], quick: bool = False) -> None:
    for name, target in targets.items():
        value = target["value"]
        shown = f"{value:.3f}" if isinstance(value, float) else json.dumps(
            {k: [round(x, 1) for x in v] for k, v in value.items()}
        )
        console.print(f"{mark(target['passed'], quick)} {name}: {shown} "
                      f"(target {target['target']})")


def print_footer(console: Console, results: dict[str, Any]) -> None:
    m = results["machine"]
    console.print(
        f"{m['cpus_usable']} cpus, Python {m['python']}, grpcio {m['grpcio']}, "
        f"{results['elapsed_s']:.0f}s"
        + (f"; written to {results['output']}" if results.get("output") else "")
    )


class OverheadReport:
    """The table the two overhead benchmarks print: one column per client, then rows of
    latency, in-process cost and throughput, each figure or "-" where a client has none."""

    def __init__(self, title: str, quick: bool, columns: dict[str, str], base: str) -> None:
        self.table = Table(title=f"{title}{' (quick: figures are rough)' if quick else ''}")
        self.table.add_column("measure")
        for label in columns.values():
            self.table.add_column(label, justify="right")
        self.keys = tuple(columns)
        self.base = base

    def row(self, label: str, values: dict[str, float], fmt: str,
            keys: tuple[str, ...] | None = None) -> None:
        keys = self.keys if keys is None else keys
        self.table.add_row(label, *[format(values[k], fmt) if k in values else "-"
                                    for k in keys])

    def latency(self, lat: dict[str, Any]) -> None:
        self.row("latency median (µs)", lat["median_us"], ".1f")
        self.row("latency p99 (µs)", lat["p99_us"], ".1f")
        self.row(f"latency ratio vs {self.base}", lat["ratio"], ".3f")
        self.row("  median of round ratios", lat["round_ratio_median"], ".3f")
        self.row("  client CPU µs/call", lat["client_cpu_us_per_call"], ".1f")

    def in_process(self, label: str, ns: dict[str, float], keys: tuple[str, ...]) -> None:
        """``ns`` per call of each client in ``keys``; the chain alone under "chain_stub"."""
        self.row(label, ns, ".0f", keys)
        self.row("  chain alone (no stub/terminal)", {"chain_stub": ns["chain"]}, ".0f", keys)

    def case(self, label: str, figures: dict[str, Any]) -> None:
        """Rows for one more case measured like latency, by some of the clients (the
        others show "-")."""
        self.row(f"{label} median (µs)", figures["median_us"], ".1f")
        self.row(f"{label} p99 (µs)", figures["p99_us"], ".1f")
        self.row(f"  ratio vs {self.base}", figures["ratio"], ".3f")
        self.row("  median of round ratios", figures["round_ratio_median"], ".3f")
        self.row("  client CPU µs/call", figures["client_cpu_us_per_call"], ".1f")

    def throughput(self, tput: dict[str, Any], workers: str) -> None:
        self.row(f"throughput calls/s ({workers})", tput["calls_per_s"], ".0f")
        self.row(f"throughput ratio vs {self.base}", tput["ratio"], ".3f")
        self.row("  median of round ratios", tput["round_ratio_median"], ".3f")
        self.row("  client CPU µs/call", tput["client_cpu_us_per_call"], ".1f")

    def print(self, results: dict[str, Any], stdout: TextIO | None, *notes: str) -> None:
        """The table, the targets, any throughput errors, ``notes`` and the footer."""
        console = Console(file=stdout or sys.stdout)
        if not console.is_terminal:
            console.width = 130
        console.print(self.table)
        print_targets(console, results["targets"], results["quick"])
        errors = {n: e for n, e in results["throughput"]["errors"].items() if e}
        if errors:
            console.print(f"[red]errors during throughput runs: {errors}[/]")
        for note in notes:
            console.print(note)
        print_footer(console, results)


def header(name: str, quick: bool, plan: Any, *dists: str) -> dict[str, Any]:
    """The figures every benchmark's results start with; ``dists`` goes to ``machine``."""
    return {
        "benchmark": name,
        "quick": quick,
        "plan": dataclasses.asdict(plan),
        "machine": machine(*dists),
    }


def finish(
    results: dict[str, Any], began: float, default: Path,
    report: Callable[[dict[str, Any], Any], None], quick: bool, stdout: Any,
    output: Path | None,
) -> dict[str, Any]:
    """The time since ``began`` into ``results``, which ``record`` writes (to ``default``
    for a full run) and ``report`` prints to ``stdout``; returns ``results``."""
    results["elapsed_s"] = time.perf_counter() - began
    record(results, default, quick, output)
    report(results, stdout)
    return results


def cli(
    argv: list[str] | None, name: str, doc: str | None, run: Callable[..., Any], default: Path
) -> int:
    """``python -m benchmarks.NAME [--quick] [--output FILE]``: ``run`` with those."""
    from resilience.log import configure_logging

    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}",
                                     description=(doc or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--output", type=Path,
                        help=f"JSON file (default: {default})")
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    results = run(quick=args.quick, output=args.output)
    # The same verdict as ``manage.py bench``: a full run that misses a target exits 1.
    from resilience.management.commands.bench import verdict

    status, why = verdict(results, args.quick)
    if why:
        print(why, file=sys.stderr if status else sys.stdout)
    return status


def write(results: dict[str, Any], path: Path) -> None:
    """Write atomically, so an interrupted run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def record(results: dict[str, Any], default: Path, quick: bool, output: Path | None) -> None:
    """Write a full run to ``output`` or ``default``, a quick run only to ``output``; the
    path written, relative to the project root where it is inside it, goes in ``output``."""
    path = output if output is not None or quick else default
    if path is not None:
        shown = path.resolve()
        results["output"] = str(shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown)
        write(results, path)
