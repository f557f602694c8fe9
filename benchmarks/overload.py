"""Goodput and latency under overload: no limit, static limits and adaptive limits.

The server is the sync cache server whose Get holds one of ``SLOTS`` slots of a
fixed-capacity resource (a semaphore, like a connection pool) for ``WORK_S`` seconds, so
its capacity is about ``SLOTS / WORK_S`` calls per second and calls beyond ``SLOTS`` queue
for a slot. Every call that reaches the handler does its work, even when its client has
given up: that wasted work is what overload costs a server with no limit.

One asyncio client process measures, over loopback:

* capacity: closed loop at high concurrency against the unlimited server, successful calls
  per second; and the unloaded p50/p99, closed loop with one call at a time;
* for each configuration (no limit; ``ConcurrencyLimit`` tuned by Little's law, capacity x
  unloaded p50; the same 10x too high; ``AdaptiveLimit`` with AIMD, Vegas and Gradient2),
  open-loop (paced) load at 0.5x, 1x, 2x and 3x capacity with a client deadline of
  ``DEADLINE_S``: goodput (calls that succeeded within the deadline, per second), p50/p99
  of the successful calls, the rejection and deadline-miss rates, and the limit;
* a step test, 1x -> 3x -> 1x, for each adaptive algorithm, with the limit sampled every
  100 ms, and how long the limit takes to recover after the drop.

"Best adaptive" is, of the algorithms that keep the goodput target at 3x, the one with the
lowest p99 (the most goodput if none keeps it).

The limit is sampled inside the server process: the servicer's factory starts a thread
that finds the server's ``AdaptiveLimit`` or ``ConcurrencyLimit`` instance (through ``gc``,
once the chains exist) and records ``limit`` and ``in_flight`` every ``SAMPLE_S``; the
benchmark collects the samples with ``ServerProcess.ask("samples")``. Targets are
reported, and a full run that misses one exits 1 (a quick run only reports them). A full
run writes JSON and three PNGs (goodput and p99 against offered load, the limit during
the step) to ``benchmarks/results/``. Run with
``python -m benchmarks.overload [--quick]`` or ``manage.py bench overload``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import gc
import statistics
import sys
import threading
import time
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
    SERVER_MAX_LIFETIME_S,
    VALUE,
    ServerProcess,
    cli,
    finish,
    header,
    mark,
    percentile,
    print_footer,
    spawned_server,
)

NAME = "overload"
RESULTS = RESULTS_DIR / f"{NAME}.json"
#: The plots of a full run go where the documentation shows them.
PLOTS_DIR = Path(__file__).resolve().parents[1] / "docs" / "img"
SLOTS = 8  # the resource's parallelism
WORK_S = 0.040  # each Get holds a slot this long: capacity ~ SLOTS / WORK_S = 200 calls/s
DEADLINE_S = 0.200  # the client's deadline, about 5x the unloaded latency
SERVER_MAX_WORKERS = 256  # threads enough that the thread pool is never the limit
SAMPLE_S = 0.1
LOADS = (0.5, 1.0, 2.0, 3.0)
BAD_FACTOR = 10  # the badly tuned static limit is this many times Little's law
ADAPTIVE_BOUNDS = {"initial_limit": 20, "min_limit": 1, "max_limit": 200}
# Each algorithm is set for a limit near 10, the size this server needs; the defaults are
# made for limits in the tens to hundreds (docs/adaptive-limits.md, "Small limits").
ALGORITHM_PARAMS: dict[str, dict[str, Any]] = {
    # A call slower than twice its unloaded latency counts as a drop.
    "aimd": {**ADAPTIVE_BOUNDS, "timeout": 2 * WORK_S},
    # Keep the estimated queue between 1 and 3 calls and move a fifth of the way per sample.
    "vegas": {**ADAPTIVE_BOUNDS, "alpha": 1, "beta": 3, "smoothing": 0.2},
    # Shrink as soon as a call is slower than the recent average; a queue allowance of 2.
    "gradient2": {**ADAPTIVE_BOUNDS, "queue_size": 2, "rtt_tolerance": 1.0, "long_window": 100},
}
ADAPTIVE = tuple(ALGORITHM_PARAMS)
CONFIGS = ("none", "static_tuned", "static_high", *ADAPTIVE)
GOODPUT_TARGET = 0.90  # x capacity, at 3x capacity
P99_TARGET = 2.0  # x unloaded p99, at 3x capacity
# The limit has recovered once it stays at or above this share of its steady 1x value for
# RECOVERY_HOLD_S; goodput, once a half-second's goodput is this share of the 1x rate.
RECOVERY_SHARE = 0.8
RECOVERY_HOLD_S = 1.0
GOODPUT_RECOVERY_SHARE = 0.9


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much to measure; every loop in the benchmark is bounded by these numbers."""

    capacity_seconds: float
    capacity_concurrency: int
    unloaded_seconds: float
    warmup_seconds: float  # at each load before its calls count
    cell_seconds: float
    configs: tuple[str, ...]
    loads: tuple[float, ...]
    step_seconds: tuple[float, float, float]  # at 1x, 3x, 1x
    drain_seconds: float  # at most, waiting for a server's backlog between loads


FULL = Plan(capacity_seconds=3.0, capacity_concurrency=48, unloaded_seconds=2.0,
            warmup_seconds=0.5, cell_seconds=3.5, configs=CONFIGS, loads=LOADS,
            step_seconds=(4.0, 6.0, 6.0), drain_seconds=15.0)
QUICK = Plan(capacity_seconds=0.5, capacity_concurrency=32, unloaded_seconds=0.3,
             warmup_seconds=0.1, cell_seconds=0.4, configs=("none", "gradient2"),
             loads=(1.0, 3.0), step_seconds=(0.4, 0.6, 0.6), drain_seconds=5.0)


# --- the server, in its own process ------------------------------------------------------


class Resource(CacheServicer):
    """The cache servicer with a Get that holds one of ``BENCH_SLOTS`` slots for
    ``BENCH_WORK_S`` seconds; ``control`` answers "busy" (Gets in the handler) and
    "samples" (the limit samples since the last ask, as ``(time, limit, in_flight)``)."""

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.slots = threading.BoundedSemaphore(settings.get("BENCH_SLOTS"))
        self.work = settings.get("BENCH_WORK_S")
        self.busy = 0
        self.lock = threading.Lock()
        self.samples: collections.deque[tuple[float, int, int]] = collections.deque(
            maxlen=20_000)
        if settings.get("BENCH_SAMPLE_LIMIT"):
            threading.Thread(target=self._sample, name="limit-sampler", daemon=True).start()

    def Get(self, request: cache_pb2.GetReq, context: grpc.ServicerContext
            ) -> cache_pb2.GetResp:
        with self.lock:
            self.busy += 1
        try:
            with self.slots:
                time.sleep(self.work)
        finally:
            with self.lock:
                self.busy -= 1
        return cache_pb2.GetResp(value=VALUE)

    def _sample(self) -> None:
        """Every ``SAMPLE_S``, the server's limit and calls in flight, until the process
        ends (bounded by the server's lifetime)."""
        from resilience.middleware import AdaptiveLimit, ConcurrencyLimit

        limiter = None
        end = time.monotonic() + SERVER_MAX_LIFETIME_S
        while time.monotonic() < end:
            time.sleep(SAMPLE_S)
            if limiter is None:  # the chains may be built at the first call
                limiter = next((o for o in gc.get_objects()
                                if isinstance(o, AdaptiveLimit | ConcurrencyLimit)), None)
            if limiter is not None:
                self.samples.append((time.monotonic(), limiter.limit, limiter.in_flight))

    def control(self, command: str) -> Any:
        if command == "busy":
            return self.busy
        if command == "samples":
            samples = list(self.samples)
            self.samples.clear()
            return samples
        return None


def server_settings(config: str, tuned: int) -> dict[str, Any]:
    """The settings of the server for ``config``; ``tuned`` is Little's law's limit."""
    values: dict[str, Any] = {
        "SERVER_MAX_WORKERS": SERVER_MAX_WORKERS, "BENCH_SLOTS": SLOTS,
        "BENCH_WORK_S": WORK_S, "BENCH_SAMPLE_LIMIT": config != "none",
    }
    if config.startswith("static"):
        limit = tuned if config == "static_tuned" else tuned * BAD_FACTOR
        values["SERVER_MIDDLEWARE"] = ["resilience.middleware.ConcurrencyLimit"]
        values["SERVER_OPTIONS"] = {"ConcurrencyLimit": {"max_in_flight": limit}}
    elif config in ALGORITHM_PARAMS:
        values["SERVER_MIDDLEWARE"] = ["resilience.middleware.AdaptiveLimit"]
        values["SERVER_OPTIONS"] = {"AdaptiveLimit": {
            "algorithm": config, "params": ALGORITHM_PARAMS[config]}}
    return values


def _server(config: str, tuned: int) -> Any:
    return spawned_server("sync", settings=server_settings(config, tuned),
                          servicer="benchmarks.overload.Resource")


# --- the client --------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    """One call: when it started (monotonic), how long it took, its status name."""

    start: float
    seconds: float
    status: str


async def _call(get: Any, request: Any, out: list[Outcome], timeout: float) -> None:
    start = time.monotonic()
    try:
        await get(request, timeout=timeout)
        status = "OK"
    except grpc.RpcError as exc:
        status = exc.code().name
    out.append(Outcome(start, time.monotonic() - start, status))


def _channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=[("grpc.enable_retries", 0)])


async def closed_loop(address: str, concurrency: int, seconds: float
                      ) -> tuple[list[Outcome], float]:
    """``concurrency`` tasks calling back to back for ``seconds``; the calls, and when
    the clock started."""
    out: list[Outcome] = []
    request = cache_pb2.GetReq(key=KEY)
    async with _channel(address) as channel:
        get = cache_pb2_grpc.CacheServiceStub(channel).Get
        await get(request, timeout=5.0)  # connect before the clock starts
        began = time.monotonic()
        end = began + seconds

        async def worker() -> None:
            while time.monotonic() < end:
                await _call(get, request, out, 5.0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out, began


async def open_loop(address: str, phases: list[tuple[float, float]]) -> list[Outcome]:
    """Calls started at a steady rate, whatever the answers: ``phases`` of
    ``(calls per second, seconds)`` one after another; each call has ``DEADLINE_S``."""
    out: list[Outcome] = []
    request = cache_pb2.GetReq(key=KEY)
    tasks: set[asyncio.Task[None]] = set()
    async with _channel(address) as channel:
        get = cache_pb2_grpc.CacheServiceStub(channel).Get
        await get(request, timeout=5.0)
        for rate, seconds in phases:
            began = time.monotonic()
            total = int(rate * seconds)  # the bound of this phase's loop
            sent = 0
            while sent < total:
                due = began + sent / rate
                now = time.monotonic()
                if due > now:
                    await asyncio.sleep(due - now)
                task = asyncio.create_task(_call(get, request, out, DEADLINE_S))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            rest = began + seconds - time.monotonic()
            if rest > 0:
                await asyncio.sleep(rest)
        if tasks:
            await asyncio.wait(tasks, timeout=DEADLINE_S + 5.0)
    return out


# --- measurements ------------------------------------------------------------------------


def _ms(seconds: list[float], p: float) -> float | None:
    return percentile([round(s * 1e6) for s in seconds], p) / 1000 if seconds else None


def summarize(calls: list[Outcome], start: float, seconds: float) -> dict[str, Any]:
    """The figures of the calls started in ``[start, start + seconds)``."""
    window = [c for c in calls if start <= c.start < start + seconds]
    ok = [c.seconds for c in window if c.status == "OK" and c.seconds <= DEADLINE_S]
    statuses = collections.Counter(c.status for c in window)
    sent = len(window) or 1
    return {
        "offered_per_s": len(window) / seconds,
        "goodput_per_s": len(ok) / seconds,
        "p50_ms": _ms(ok, 50),
        "p99_ms": _ms(ok, 99),
        "rejected_rate": statuses.get("RESOURCE_EXHAUSTED", 0) / sent,
        "deadline_rate": statuses.get("DEADLINE_EXCEEDED", 0) / sent,
        "statuses": dict(statuses),
    }


def _limits(samples: list[tuple[float, int, int]], start: float, seconds: float
            ) -> dict[str, Any] | None:
    window = [s for s in samples if start <= s[0] < start + seconds]
    if not window:
        return None
    limits = [s[1] for s in window]
    return {"median": statistics.median(limits), "min": min(limits), "max": max(limits),
            "series": [[round(t - start, 2), lim, busy] for t, lim, busy in window]}


def _drain(server: ServerProcess, plan: Plan) -> None:
    """Wait, at most ``plan.drain_seconds``, until no Get is in the server's handler in
    two polls in a row, so one load's backlog does not count against the next."""
    end = time.monotonic() + plan.drain_seconds
    idle = 0
    while idle < 2 and time.monotonic() < end:
        idle = idle + 1 if server.ask("busy") == 0 else 0
        time.sleep(0.2)


def measure_capacity(plan: Plan) -> dict[str, Any]:
    """Capacity (closed loop, high concurrency) and the unloaded latency (one at a time)."""
    with _server("none", 1) as server:
        asyncio.run(closed_loop(server.address, 4, 0.3))  # warm up
        alone, _ = asyncio.run(closed_loop(server.address, 1, plan.unloaded_seconds))
        _drain(server, plan)
        loaded, began = asyncio.run(closed_loop(server.address, plan.capacity_concurrency,
                                                plan.capacity_seconds))
    ok_alone = [c.seconds for c in alone if c.status == "OK"]
    # Only calls that ended within the window: those still running at its end finish late.
    end = began + plan.capacity_seconds
    ok = [c for c in loaded if c.status == "OK" and c.start + c.seconds <= end]
    capacity = len(ok) / plan.capacity_seconds
    p50 = _ms(ok_alone, 50) or WORK_S * 1000
    return {
        "capacity_per_s": capacity,
        "nominal_capacity_per_s": SLOTS / WORK_S,
        "unloaded_p50_ms": p50,
        "unloaded_p99_ms": _ms(ok_alone, 99) or p50,
        # Little's law: the calls in flight at capacity with no queue.
        "tuned_limit": max(1, round(capacity * p50 / 1000)),
    }


def measure_config(config: str, plan: Plan, base: dict[str, Any]) -> dict[str, Any]:
    """Each load of ``plan.loads`` in turn against a fresh server for ``config``."""
    cells: dict[str, Any] = {}
    with _server(config, base["tuned_limit"]) as server:
        for load in plan.loads:
            rate = load * base["capacity_per_s"]
            start = time.monotonic() + plan.warmup_seconds
            calls = asyncio.run(open_loop(
                server.address, [(rate, plan.warmup_seconds + plan.cell_seconds)]))
            cell = summarize(calls, start, plan.cell_seconds)
            cell["limit"] = _limits(server.ask("samples"), start, plan.cell_seconds)
            cells[f"{load:g}x"] = cell
            _drain(server, plan)
            server.ask("samples")  # the drain's samples belong to no load
    return cells


def _recovery(series: list[list[float]], steady: float, after: float) -> float | None:
    """Seconds from ``after`` until the limit stays at or above ``RECOVERY_SHARE`` of
    ``steady`` for ``RECOVERY_HOLD_S`` (or to the end of the series); None if it never
    does. Above is fine: a limit higher than the load needs does not bind."""
    later = [(t, lim) for t, lim, _ in series if t >= after]
    for i, (t, _) in enumerate(later):
        held = [lim for u, lim in later[i:] if u < t + RECOVERY_HOLD_S]
        if all(lim >= steady * RECOVERY_SHARE for lim in held):
            return max(0.0, t - after)
    return None


def measure_step(config: str, plan: Plan, base: dict[str, Any]) -> dict[str, Any]:
    """1x -> 3x -> 1x against a fresh ``config`` server: the limit and the calls in flight
    every ``SAMPLE_S`` (``[seconds, limit, in_flight]``), the goodput per half second, and
    how long the limit takes to recover after the drop."""
    low, high, back = plan.step_seconds
    rate = base["capacity_per_s"]
    with _server(config, base["tuned_limit"]) as server:
        start = time.monotonic()
        calls = asyncio.run(open_loop(server.address, [(rate, low), (3 * rate, high),
                                                       (rate, back)]))
        total = low + high + back
        limits = _limits(server.ask("samples"), start, total + 1.0)
    series = limits["series"] if limits else []
    # Steady 1x: the median over the second half of the first 1x phase.
    steady_window = [lim for t, lim, _ in series if low / 2 <= t < low]
    steady = statistics.median(steady_window) if steady_window else None
    bins = int(total / 0.5)
    goodput = [
        sum(1 for c in calls if c.status == "OK" and c.seconds <= DEADLINE_S
            and start + 0.5 * i <= c.start < start + 0.5 * (i + 1)) / 0.5
        for i in range(bins)
    ]
    return {
        "algorithm": config,
        "phases_s": [low, high, back],
        "offered_per_s": [rate, 3 * rate, rate],
        "limit_series": series,
        "steady_limit": steady,
        "overload_limit_median": statistics.median(
            [lim for t, lim, _ in series if low + high / 2 <= t < low + high] or [0]),
        "goodput_per_half_s": goodput,
        "recovery_s": (_recovery(series, steady, low + high) if steady else None),
        "recovery_definition": (
            f"seconds after the load drops back to 1x until the limit stays at or above "
            f"{RECOVERY_SHARE:.0%} of its steady 1x value (median of the second half of "
            f"the first 1x phase) for {RECOVERY_HOLD_S:g}s"),
        "goodput_recovery_s": next(
            (0.5 * (i + 1) - (low + high) for i, g in enumerate(goodput)
             if 0.5 * i >= low + high and g >= GOODPUT_RECOVERY_SHARE * rate), None),
        "goodput_recovery_definition": (
            f"seconds after the load drops back to 1x until the end of the first half "
            f"second whose goodput is at least {GOODPUT_RECOVERY_SHARE:.0%} of the 1x rate"),
    }


def best_adaptive(configs: dict[str, Any], top: str, capacity: float) -> str | None:
    """The adaptive configuration that serves the ``top`` load best: of those that keep
    the goodput target, the one with the lowest p99; if none does, the most goodput."""
    cells = {name: c[top] for name, c in configs.items() if name in ADAPTIVE and top in c}
    keeping = [name for name, cell in cells.items()
               if cell["goodput_per_s"] >= GOODPUT_TARGET * capacity and cell["p99_ms"]]
    if keeping:
        return min(keeping, key=lambda name: cells[name]["p99_ms"])
    return max(cells, key=lambda name: cells[name]["goodput_per_s"], default=None)


def judge(results: dict[str, Any]) -> dict[str, Any]:
    """The acceptance targets at the highest load, each with its figures; a full run that
    misses one exits 1 (a quick run only reports them)."""
    base = results["baseline"]
    top = f"{max(results['plan']['loads']):g}x"
    configs = results["configs"]
    best = results["best_adaptive"]
    targets: dict[str, Any] = {}
    if best is not None:
        cell = configs[best][top]
        ratio = cell["goodput_per_s"] / base["capacity_per_s"]
        targets["best_adaptive_goodput"] = {
            "value": ratio, "target": f">= {GOODPUT_TARGET} x capacity at {top}",
            "passed": ratio >= GOODPUT_TARGET, "algorithm": best}
        p99 = cell["p99_ms"]
        p99_ratio = p99 / base["unloaded_p99_ms"] if p99 is not None else float("inf")
        targets["best_adaptive_p99"] = {
            "value": p99_ratio, "target": f"<= {P99_TARGET} x unloaded p99 at {top}",
            "passed": p99_ratio <= P99_TARGET, "algorithm": best}
    if "none" in configs:
        lost = 1 - configs["none"][top]["goodput_per_s"] / base["capacity_per_s"]
        targets["no_limit_goodput_lost"] = {
            "value": lost, "target": f"reported: the share of capacity lost at {top}",
            "passed": True}
    for config, step in results.get("steps", {}).items():
        targets[f"limit_recovery_s_{config}"] = {
            "value": step["recovery_s"], "target": "reported: " + step["recovery_definition"],
            "passed": step["recovery_s"] is not None}
    return targets


# --- output ------------------------------------------------------------------------------


LABELS = {
    "none": "no limit", "static_tuned": "static (Little's law)",
    "static_high": f"static ({BAD_FACTOR}x too high)", "aimd": "adaptive AIMD",
    "vegas": "adaptive Vegas", "gradient2": "adaptive Gradient2",
}


def plot(results: dict[str, Any], directory: Path) -> list[str]:
    """The three PNGs into ``directory``; their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    loads = results["plan"]["loads"]
    base = results["baseline"]
    names = []
    for figure, key, ylabel, reference in (
        ("goodput", "goodput_per_s", "goodput (successful calls/s)",
         base["capacity_per_s"]),
        ("p99", "p99_ms", "p99 of successful calls (ms)", base["unloaded_p99_ms"]),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for config, cells in results["configs"].items():
            ys = [cells[f"{load:g}x"][key] for load in loads]
            ax.plot(loads, [y if y is not None else float("nan") for y in ys], marker="o",
                    label=LABELS[config])
        ax.axhline(reference, color="grey", linestyle="--", linewidth=1,
                   label="capacity" if figure == "goodput" else "unloaded p99")
        ax.set_xlabel("offered load (x capacity)")
        ax.set_ylabel(ylabel)
        ax.set_xticks(loads)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"Overload: {ylabel.split(' (')[0]} vs offered load")
        fig.tight_layout()
        name = f"{NAME}-{figure}.png"
        fig.savefig(directory / name, dpi=100)
        plt.close(fig)
        names.append(name)
    steps = results.get("steps", {})
    if steps:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for config, step in steps.items():
            series = step["limit_series"]
            ax.step([t for t, _, _ in series], [lim for _, lim, _ in series], where="post",
                    label=f"limit, {LABELS[config]}")
        best = results["best_adaptive"]
        series = steps[best]["limit_series"] if best in steps else []
        ax.plot([t for t, _, _ in series], [busy for _, _, busy in series], linewidth=0.8,
                alpha=0.6, color="grey", label=f"calls in flight, {LABELS.get(best, best)}")
        ax.axhline(SLOTS, color="grey", linestyle="--", linewidth=1,
                   label=f"resource slots ({SLOTS})")
        low, high, _ = next(iter(steps.values()))["phases_s"]
        ax.axvspan(low, low + high, color="red", alpha=0.1, label="3x load")
        ax.set_xlabel("seconds")
        ax.set_ylabel("concurrency limit")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("Limit over time: 1x -> 3x -> 1x capacity")
        fig.tight_layout()
        name = f"{NAME}-limit-step.png"
        fig.savefig(directory / name, dpi=100)
        plt.close(fig)
        names.append(name)
    return names


def _f(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def report(results: dict[str, Any], stdout: TextIO | None = None) -> None:
    console = Console(file=stdout or sys.stdout, width=120)
    base = results["baseline"]
    console.print(
        f"capacity {base['capacity_per_s']:.0f} calls/s (nominal "
        f"{base['nominal_capacity_per_s']:.0f}), unloaded p50 {base['unloaded_p50_ms']:.1f} "
        f"ms, p99 {base['unloaded_p99_ms']:.1f} ms, Little's-law limit "
        f"{base['tuned_limit']}, deadline {DEADLINE_S * 1000:.0f} ms")
    table = Table(title="Get under overload (sync server, open-loop asyncio client)")
    for column in ("config", "load", "offered/s", "goodput/s", "p50 ms", "p99 ms",
                   "rejected", "deadline", "limit (median, min-max)"):
        table.add_column(column, justify="left" if column == "config" else "right")
    for config, cells in results["configs"].items():
        for load, cell in cells.items():
            lim = cell["limit"]
            table.add_row(
                LABELS[config], load, f"{cell['offered_per_s']:.0f}",
                f"{cell['goodput_per_s']:.0f}", _f(cell["p50_ms"]), _f(cell["p99_ms"]),
                f"{cell['rejected_rate']:.0%}", f"{cell['deadline_rate']:.0%}",
                "-" if lim is None else f"{lim['median']:g} ({lim['min']}-{lim['max']})")
    console.print(table)
    for step in results.get("steps", {}).values():
        console.print(
            f"step 1x->3x->1x ({step['algorithm']}): steady limit {_f(step['steady_limit'], 'g')}"
            f", at 3x {_f(step['overload_limit_median'], 'g')}; limit recovery "
            f"{_f(step['recovery_s'], '.1f')} s ({step['recovery_definition']}); goodput "
            f"recovery {_f(step['goodput_recovery_s'], '.1f')} s "
            f"({step['goodput_recovery_definition']})")
    for name, target in results["targets"].items():
        console.print(f"{mark(target['passed'], results['quick'])} {name}: "
                      f"{_f(target['value'], '.3f')} "
                      f"(target {target['target']})")
    if results.get("plots"):
        console.print("plots: " + ", ".join(results["plots"]))
    print_footer(console, results)


def run(
    *, quick: bool = False, stdout: TextIO | None = None, output: Path | None = None
) -> dict[str, Any]:
    """Measure, print a table to ``stdout`` and return the figures.

    A full run writes them to ``benchmarks/results/overload.json`` (or ``output``) with the
    PNGs beside it; a quick run writes only to ``output``, if given, so it never replaces
    full figures.
    """
    plan = QUICK if quick else FULL
    began = time.perf_counter()
    results: dict[str, Any] = {
        **header(NAME, quick, plan, "matplotlib"),
        "server": {"slots": SLOTS, "work_s": WORK_S, "max_workers": SERVER_MAX_WORKERS},
        "deadline_s": DEADLINE_S,
        "algorithm_params": ALGORITHM_PARAMS,
    }
    base = results["baseline"] = measure_capacity(plan)
    results["configs"] = {config: measure_config(config, plan, base)
                          for config in plan.configs}
    top = f"{max(plan.loads):g}x"
    results["best_adaptive"] = best_adaptive(results["configs"], top, base["capacity_per_s"])
    results["steps"] = {config: measure_step(config, plan, base)
                        for config in plan.configs if config in ADAPTIVE}
    results["targets"] = judge(results)
    directory = (output.parent if output is not None else None if quick else PLOTS_DIR)
    results["plots"] = plot(results, directory) if directory is not None else []
    return finish(results, began, RESULTS, report, quick, stdout, output)


def main(argv: list[str] | None = None) -> int:
    return cli(argv, NAME, __doc__, run, RESULTS)


if __name__ == "__main__":
    sys.exit(main())
