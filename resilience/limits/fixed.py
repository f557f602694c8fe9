"""A limit that never changes: the baseline, and what to use when latency says nothing
about capacity (calls of wildly different cost, say)."""

from __future__ import annotations

import dataclasses
import time

from resilience.core.middleware import option
from resilience.limits.base import Clock, LimitOptions


class FixedLimit:
    """``initial_limit``, forever; samples are ignored."""

    __slots__ = ("_limit", "clock", "options")

    @dataclasses.dataclass(frozen=True)
    class Options(LimitOptions):
        initial_limit: int = option(20, "The limit, for good.", ge=1)
        min_limit: int = option(1, "Only checks initial_limit; kept for a uniform shape.", ge=1)
        max_limit: int = option(1000, "Only checks initial_limit; kept for a uniform shape.", ge=1)

    def __init__(self, options: FixedLimit.Options, clock: Clock = time.monotonic) -> None:
        self.options = options
        self.clock = clock
        self._limit = options.initial_limit

    @property
    def limit(self) -> int:
        return self._limit

    def on_sample(self, start: float, rtt: float, inflight: int, dropped: bool) -> int:
        return self._limit
