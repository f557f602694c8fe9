"""Drive a paced load through any callable and summarise it: the engine of ``runclient load``."""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import grpc

from resilience.core.errors import RpcStatusError, status_of


def outcome(exc: grpc.RpcError) -> str:
    """The status name, marked when the client's own chain answered (an open breaker, a
    client-side limit) so that a summary tells those from the server's answers."""
    name = status_of(exc).name
    return f"{name} (local)" if isinstance(exc, RpcStatusError) else name


@dataclasses.dataclass
class LoadResult:
    """What a load run saw: one latency per successful call and a count per status code."""

    codes: Counter[str] = dataclasses.field(default_factory=Counter)
    latencies: list[float] = dataclasses.field(default_factory=list)
    elapsed: float = 0.0

    @property
    def calls(self) -> int:
        return sum(self.codes.values())

    @property
    def successes(self) -> int:
        return self.codes.get("OK", 0)

    def record(self, code: str, latency: float) -> None:
        self.codes[code] += 1
        if code == "OK":
            self.latencies.append(latency)

    def percentile(self, p: float) -> float | None:
        """Latency percentile of successful calls, in seconds."""
        if not self.latencies:
            return None
        if len(self.latencies) == 1:
            return self.latencies[0]
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[int(p) - 1]


def run_load(
    send: Callable[[int], object],
    *,
    rate: float,
    duration: float,
    concurrency: int,
    progress: Callable[[LoadResult], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> LoadResult:
    """Call ``send(i)`` at ``rate`` per second for ``duration`` seconds from ``concurrency``
    threads. Each thread keeps its own schedule, so a slow call delays only that thread;
    the run stops by itself after ``duration`` plus the last calls in flight.
    """
    result = LoadResult()
    lock = threading.Lock()
    total = max(1, int(rate * duration))
    start = clock()

    def worker(offset: int) -> None:
        for i in range(offset, total, concurrency):
            wait = start + i / rate - clock()
            if wait > 0:
                time.sleep(wait)
            begun = clock()
            try:
                send(i)
                code = "OK"
            except grpc.RpcError as exc:
                code = outcome(exc)
            with lock:
                result.record(code, clock() - begun)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(concurrency)]
    for thread in threads:
        thread.start()
    while alive := [t for t in threads if t.is_alive()]:
        alive[0].join(0.25)
        if progress is not None:
            with lock:
                progress(result)
    result.elapsed = clock() - start
    return result


async def run_load_async(
    send: Callable[[int], Awaitable[object]],
    *,
    rate: float,
    duration: float,
    concurrency: int,
    progress: Callable[[LoadResult], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> LoadResult:
    """``run_load`` on the event loop: ``await send(i)`` from ``concurrency`` tasks, each on
    its own schedule, with no threads."""
    result = LoadResult()
    total = max(1, int(rate * duration))
    start = clock()

    async def worker(offset: int) -> None:
        for i in range(offset, total, concurrency):
            wait = start + i / rate - clock()
            if wait > 0:
                await asyncio.sleep(wait)
            begun = clock()
            try:
                await send(i)
                code = "OK"
            except grpc.RpcError as exc:
                code = outcome(exc)
            result.record(code, clock() - begun)

    workers = asyncio.gather(*(worker(n) for n in range(concurrency)))
    while not workers.done():
        await asyncio.wait([workers], timeout=0.25)
        if progress is not None:
            progress(result)
    await workers
    result.elapsed = clock() - start
    return result
