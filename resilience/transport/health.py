"""Health under load: report NOT_SERVING for the server ("") while its concurrency limiter
has been saturated for longer than HEALTH_SATURATION_SECONDS, and SERVING again once it
is not, so that a load balancer sends new calls to other replicas meanwhile.

A small monitor samples the server stack's ConcurrencyLimit and AdaptiveLimit instances
(a thread on the sync server, a task on the asyncio one) and feeds a pure
``SaturationTracker``. Draining wins: once the server has entered graceful shutdown, the
health servicer ignores every later status, so a recovery never reports SERVING again.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import structlog

from resilience.core.middleware import Middleware
from resilience.limits.saturation import SaturationTracker
from resilience.middleware.adaptive import AdaptiveLimit
from resilience.middleware.concurrency import ConcurrencyLimit

log = structlog.get_logger(__name__)

#: Bounds of the sampling interval: a fifth of HEALTH_SATURATION_SECONDS, within these.
MIN_INTERVAL_S = 0.01
MAX_INTERVAL_S = 0.25


def stack_limiters(stacks: Mapping[str, Sequence[Middleware]]) -> list[Any]:
    """The concurrency limiters (ConcurrencyLimit, AdaptiveLimit) of a server's stacks,
    outermost first per method; methods whose stack is not built yet have none."""
    return [
        m for chain in list(stacks.values()) for m in chain
        if isinstance(m, ConcurrencyLimit | AdaptiveLimit)
    ]


def sample_interval(seconds: float) -> float:
    return max(MIN_INTERVAL_S, min(MAX_INTERVAL_S, seconds / 5))


class _Sampler:
    """One sample: is any limiter full? Fed to the tracker; logs the changes."""

    def __init__(self, seconds: float, limiters: Callable[[], Sequence[Any]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tracker = SaturationTracker(seconds)
        self.limiters = limiters
        self.clock = clock
        self.interval = sample_interval(seconds)

    def sample(self) -> bool | None:
        """Take one sample; return the new overloaded state when it changes, else None."""
        full = [m for m in self.limiters() if m.in_flight >= m.limit]
        change = self.tracker.update(bool(full), self.clock())
        if change:
            log.warning(
                "health_not_serving", reason="concurrency limit saturated",
                seconds=self.tracker.seconds,
                limit=full[0].limit, in_flight=full[0].in_flight,
            )
        elif change is False:
            log.info("health_serving", reason="concurrency limit no longer saturated")
        return change


class SaturationMonitor(_Sampler):
    """The sync server's monitor: a daemon thread sampling until ``stop``."""

    def __init__(self, seconds: float, limiters: Callable[[], Sequence[Any]],
                 report: Callable[[bool], None]) -> None:
        super().__init__(seconds, limiters)
        self._report = report
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="resilience-health-saturation", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            change = self.sample()
            if change is not None:
                self._report(change)


class AioSaturationMonitor(_Sampler):
    """The asyncio server's monitor: a task on the server's loop, cancelled by ``stop``."""

    def __init__(self, seconds: float, limiters: Callable[[], Sequence[Any]],
                 report: Callable[[bool], Awaitable[None]]) -> None:
        super().__init__(seconds, limiters)
        self._report = report
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="resilience-health-saturation"
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            change = self.sample()
            if change is not None:
                await self._report(change)
