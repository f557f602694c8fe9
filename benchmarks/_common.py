"""What the benchmarks share: settings, the server process, statistics, targets, output.

Not a benchmark itself (its name starts with ``_``, so ``manage.py bench`` skips it).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import multiprocessing
import os
import platform
import statistics
import traceback
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import grpc
from rich.console import Console

from resilience.conf.settings import Settings

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ROOT = RESULTS_DIR.parents[1]
METHOD = "cache.CacheService/Get"
KEY = "bench-key"
VALUE = b"v" * 64
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

ServerKind = Literal["sync", "aio"]


def bench_settings(**values: Any) -> Settings:
    """Settings built in code, over the documented defaults."""
    return Settings(values, env="benchmark", path=Path("<bench>"))


# --- the server, in its own process ------------------------------------------------------


def _serve(conn: Any, kind: ServerKind = "sync") -> None:
    """Child process: serve the cache app with no server middleware until told to stop.

    ``kind`` is ``"sync"`` (``Server``, grpcio with a thread pool) or ``"aio"``
    (``AioServer`` on grpc.aio, built inside the event loop that runs it).
    """
    if kind == "aio":
        asyncio.run(_serve_aio(conn))
        return
    try:
        from resilience.apps.registry import load_apps
        from resilience.log import configure_logging
        from resilience.transport.serving import Server

        configure_logging("WARNING")
        settings = bench_settings(SERVER_MIDDLEWARE=[], LOG_LEVEL="WARNING")
        server = Server(settings, load_apps(settings.INSTALLED_APPS), "127.0.0.1:0")
        server.start()
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise
    try:
        conn.send(("ok", server.address))
        # Returns on "stop", or at EOF when the parent has gone, or at the lifetime bound.
        conn.poll(SERVER_MAX_LIFETIME_S)
    finally:
        server.stop(grace=0)


async def _serve_aio(conn: Any) -> None:
    try:
        from resilience.apps.registry import load_apps
        from resilience.log import configure_logging
        from resilience.transport.aio_serving import AioServer

        configure_logging("WARNING")
        settings = bench_settings(SERVER_MIDDLEWARE=[], LOG_LEVEL="WARNING", ASYNCIO=True)
        server = AioServer(settings, load_apps(settings.INSTALLED_APPS), "127.0.0.1:0")
        await server.start()
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise
    loop = asyncio.get_running_loop()
    told = asyncio.Event()
    try:
        conn.send(("ok", server.address))
        # Readable on "stop", or at EOF when the parent has gone; bounded by the lifetime.
        loop.add_reader(conn.fileno(), told.set)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(told.wait(), SERVER_MAX_LIFETIME_S)
    finally:
        with contextlib.suppress(Exception):
            loop.remove_reader(conn.fileno())
        await server.stop(grace=0)


@contextlib.contextmanager
def server_process(kind: ServerKind = "sync") -> Iterator[str]:
    """A cache server in a spawned process on a loopback port; yields its address."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(child, kind), name="bench-server", daemon=True)
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
        yield detail
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


# --- statistics --------------------------------------------------------------------------


def rotated(names: list[str], by: int) -> list[str]:
    by %= len(names)
    return names[by:] + names[:by]


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


def mark(passed: bool) -> str:
    return "[green]pass[/]" if passed else "[red]FAIL[/]"


def print_targets(console: Console, targets: dict[str, Any]) -> None:
    for name, target in targets.items():
        value = target["value"]
        shown = f"{value:.3f}" if isinstance(value, float) else json.dumps(
            {k: [round(x, 1) for x in v] for k, v in value.items()}
        )
        console.print(f"{mark(target['passed'])} {name}: {shown} (target {target['target']})")


def print_footer(console: Console, results: dict[str, Any]) -> None:
    m = results["machine"]
    console.print(
        f"{m['cpus_usable']} cpus, Python {m['python']}, grpcio {m['grpcio']}, "
        f"{results['elapsed_s']:.0f}s"
        + (f"; written to {results['output']}" if results.get("output") else "")
    )


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
