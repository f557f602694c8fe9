"""How many attempts a server receives per client call, with and without the retry budget.

A server in its own process fails each Get attempt with UNAVAILABLE at a set rate (0%,
1%, 10%, 50%, 100%, drawn at random per attempt); the client calls it through Retry
(``max_attempts`` 3, millisecond backoffs) on a fresh channel per configuration, first
``warmup_calls`` calls to reach steady state, then ``calls`` measured ones. The server
counts the attempts it received, so the figure is what the server saw. With the budget
(gRFC A6 retry throttling, 10 tokens, ratio 0.1) a server that fails everything gets
about 1 attempt per call instead of 3, while at low failure rates retries go on.

Run with ``python -m benchmarks.retry_amplification [--quick]`` or
``manage.py bench retry_amplification``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

import grpc
from rich.console import Console
from rich.table import Table

from apps.cache.protos import cache_pb2, cache_pb2_grpc
from benchmarks._common import (
    RESULTS_DIR,
    bench_settings,
    cli,
    finish,
    header,
    print_footer,
    server_process,
)
from resilience.transport.client import connect

NAME = "retry_amplification"
RESULTS = RESULTS_DIR / f"{NAME}.json"
RATES = (0.0, 0.01, 0.1, 0.5, 1.0)
MAX_ATTEMPTS = 3
COUNT_PREFIX = "count:"
SEED = 1234


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much to measure; every loop in the benchmark is bounded by these numbers."""

    warmup_calls: int
    calls: int


FULL = Plan(warmup_calls=200, calls=1000)
QUICK = Plan(warmup_calls=30, calls=100)


# --- the failing server, in its own process ----------------------------------------------


class FailingServicer(cache_pb2_grpc.CacheServiceServicer):
    """Get with key ``p=RATE;...`` fails with UNAVAILABLE with probability RATE, and
    counts attempts per key; Get with ``count:KEY`` answers that count."""

    def __init__(self, settings: Any = None) -> None:
        self.lock = threading.Lock()
        self.attempts: Counter[str] = Counter()
        self.rng = random.Random(SEED)

    def Get(self, request: cache_pb2.GetReq, context: grpc.ServicerContext) -> Any:
        key = request.key
        if key.startswith(COUNT_PREFIX):
            with self.lock:
                count = self.attempts[key.removeprefix(COUNT_PREFIX)]
            return cache_pb2.GetResp(value=str(count).encode())
        rate = float(key.split(";", 1)[0].removeprefix("p="))
        with self.lock:
            self.attempts[key] += 1
            fail = self.rng.random() < rate
        if fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "failing on purpose")
        return cache_pb2.GetResp(value=b"ok")


def failing_server() -> contextlib.AbstractContextManager[str]:
    """The failing server in a spawned process on a loopback port; yields its address."""
    return server_process("sync", settings={"LOG_LEVEL": "ERROR"},
                          servicer="benchmarks.retry_amplification.FailingServicer")


# --- the client --------------------------------------------------------------------------


def measure(address: str, rate: float, budget: bool, plan: Plan) -> dict[str, Any]:
    """One configuration on a fresh channel (so a fresh budget): attempts per call."""
    settings = bench_settings(
        CLIENT_MIDDLEWARE=["resilience.middleware.Retry"],
        CLIENT_OPTIONS={"Retry": {
            "max_attempts": MAX_ATTEMPTS, "initial_backoff": 0.001, "max_backoff": 0.002,
            "budget": budget,
        }},
    )
    key = f"p={rate};budget={budget}"
    request = cache_pb2.GetReq(key=key)
    channel = connect(address, settings)
    try:
        stub = cache_pb2_grpc.CacheServiceStub(channel)

        def attempts_so_far() -> int:
            return int(stub.Get(cache_pb2.GetReq(key=COUNT_PREFIX + key), timeout=10).value)

        def calls(count: int) -> int:
            failed = 0
            for _ in range(count):
                try:
                    stub.Get(request, timeout=10)
                except grpc.RpcError:
                    failed += 1
            return failed

        calls(plan.warmup_calls)
        retry = channel.middleware["cache.CacheService/Get"][0]
        before, retries, throttled = attempts_so_far(), retry.retries, retry.throttled
        began = time.perf_counter()
        failed = calls(plan.calls)
        elapsed = time.perf_counter() - began
        attempts = attempts_so_far() - before
    finally:
        channel.close()
    return {
        "failure_rate": rate,
        "budget": budget,
        "calls": plan.calls,
        "attempts": attempts,
        "attempts_per_call": attempts / plan.calls,
        "retries": retry.retries - retries,
        "throttled": retry.throttled - throttled,
        "failed_calls": failed,
        "seconds": elapsed,
    }


def run(
    *, quick: bool = False, stdout: TextIO | None = None, output: Path | None = None
) -> dict[str, Any]:
    """Measure every failure rate with and without the budget, print a table to
    ``stdout`` and return the figures; a full run writes them to ``RESULTS`` (or
    ``output``), a quick run only to ``output``."""
    from resilience.log import configure_logging

    configure_logging("ERROR")  # a retry is a WARNING line; thousands would drown the table
    plan = QUICK if quick else FULL
    began = time.perf_counter()
    results: dict[str, Any] = {
        **header(NAME, quick, plan),
        "mode": "sync",
        "max_attempts": MAX_ATTEMPTS,
        "budget": {"max_tokens": 10.0, "token_ratio": 0.1},
        "rows": [],
    }
    with failing_server() as address:
        for budget in (True, False):
            for rate in RATES:
                results["rows"].append(measure(address, rate, budget, plan))
    return finish(results, began, RESULTS, report, quick, stdout, output)


def report(results: dict[str, Any], stdout: TextIO | None) -> None:
    console = Console(file=stdout or sys.stdout, width=100)
    table = Table(title=f"retry amplification (sync, max_attempts {MAX_ATTEMPTS}, "
                        f"{results['plan']['calls']} calls after "
                        f"{results['plan']['warmup_calls']} warm-up)")
    table.add_column("failure rate", justify="right")
    for heading in ("budget on", "budget off"):
        table.add_column(f"attempts/call, {heading}", justify="right")
    for heading in ("retries", "throttled", "failed calls"):
        table.add_column(f"{heading} (on)", justify="right")
    by = {(row["budget"], row["failure_rate"]): row for row in results["rows"]}
    for rate in RATES:
        on, off = by[(True, rate)], by[(False, rate)]
        table.add_row(
            f"{rate:.0%}", f"{on['attempts_per_call']:.3f}", f"{off['attempts_per_call']:.3f}",
            str(on["retries"]), str(on["throttled"]), str(on["failed_calls"]),
        )
    console.print(table)
    print_footer(console, results)


def main(argv: list[str] | None = None) -> int:
    return cli(argv, NAME, __doc__, run, RESULTS)


if __name__ == "__main__":
    sys.exit(main())
