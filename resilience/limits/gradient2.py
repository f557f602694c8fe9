"""Gradient limit after Netflix's ``Gradient2Limit``: compare each call's RTT (short
term) with an exponential average of RTTs (long term). While they agree the limit grows by
a small queue allowance; when the short RTT climbs past ``rtt_tolerance`` times the long
one, the limit shrinks in proportion, at most halving per sample before smoothing.

Unlike Vegas it needs no minimum RTT, which one lucky sample can set too low for good;
the long average follows a server whose normal latency moves.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Literal

from resilience.core.middleware import option
from resilience.limits.base import Clock, LimitOptions, clamp

# Netflix averages the first samples plainly before switching to the exponential average,
# so the long RTT starts from a mean rather than from one sample weighted 2/(window+1).
WARMUP_SAMPLES = 10


class Gradient2Limit:
    """``limit = limit*(1-s) + s*(limit*gradient + queue)`` with
    ``gradient = clamp(rtt_tolerance * long_rtt / rtt, 0.5, 1)``.

    Drops are ignored, as in Netflix's: a timed-out call already shows as a long RTT.
    """

    __slots__ = (
        "_count", "_estimate", "_factor", "_max", "_min", "_queue", "_smoothing", "_sqrt",
        "_sum", "_tolerance", "clock", "long_rtt", "options",
    )  # fmt: skip

    @dataclasses.dataclass(frozen=True)
    class Options(LimitOptions):
        min_limit: int = option(20, "The limit never goes below this (Netflix: 20).", ge=1)
        max_limit: int = option(200, "The limit never goes above this (Netflix: 200).", ge=1)
        smoothing: float = option(
            0.2, "Weight of the new estimate against the old one, in (0, 1].", gt=0
        )
        rtt_tolerance: float = option(
            1.5, "How many times the long RTT a call may take before the limit shrinks.", ge=1
        )
        long_window: int = option(
            600, "Samples in the long-term RTT average (factor 2/(long_window+1)).", ge=1
        )
        queue_size: int = option(
            4, "How far the limit may grow past the calls it can serve at once.", ge=0
        )
        queue_size_function: Literal["fixed", "sqrt"] = option(
            "fixed",
            "'fixed': queue_size; 'sqrt': max(queue_size, floor(sqrt(limit))).",
        )

        def validate(self) -> list[str]:
            problems = super().validate()
            if self.smoothing > 1:
                problems.append(
                    f"option 'smoothing' is {self.smoothing!r}; expected a value in (0, 1] "
                    "(1 takes each new estimate as is): use e.g. 0.2"
                )
            return problems

    def __init__(self, options: Gradient2Limit.Options, clock: Clock = time.monotonic) -> None:
        self.options = options
        self.clock = clock
        self._estimate = float(options.initial_limit)
        self._min = options.min_limit
        self._max = options.max_limit
        self._smoothing = options.smoothing
        self._tolerance = options.rtt_tolerance
        self._factor = 2.0 / (options.long_window + 1)
        self._queue = options.queue_size
        self._sqrt = options.queue_size_function == "sqrt"
        self.long_rtt = 0.0
        self._count = 0
        self._sum = 0.0

    @property
    def limit(self) -> int:
        return int(self._estimate)

    def on_sample(self, start: float, rtt: float, inflight: int, dropped: bool) -> int:
        if rtt <= 0:  # a clock that did not move says nothing about latency
            return int(self._estimate)
        estimate = self._estimate
        queue = self._queue
        if self._sqrt:
            queue = max(queue, math.isqrt(int(estimate)))
        if self._count < WARMUP_SAMPLES:
            self._count += 1
            self._sum += rtt
            long_rtt = self._sum / self._count
        else:
            long_rtt = self.long_rtt * (1 - self._factor) + rtt * self._factor
        # After a long overload the average stays high while calls are fast again; decay it
        # faster so the limit does not keep its old, too generous reading.
        self.long_rtt = long_rtt * 0.95 if long_rtt > 2 * rtt else long_rtt
        if 2 * inflight < estimate:  # not using the limit: no evidence to move it
            return int(estimate)
        gradient = max(0.5, min(1.0, self._tolerance * long_rtt / rtt))
        s = self._smoothing
        new = estimate * (1 - s) + (estimate * gradient + queue) * s
        self._estimate = estimate = clamp(new, self._min, self._max)
        return int(estimate)
