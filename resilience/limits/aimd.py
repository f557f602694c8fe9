"""Additive increase, multiplicative decrease, after Netflix's ``AIMDLimit``: the TCP
Reno idea applied to calls in flight. Loss (a dropped call, or one slower than
``timeout``) is the only congestion signal, so it needs no latency baseline, but it only
backs off once calls already fail."""

from __future__ import annotations

import dataclasses
import time

from resilience.core.middleware import option
from resilience.limits.base import Clock, LimitOptions


class AIMDLimit:
    """+1 per good sample while the limit is in use; x ``backoff_ratio`` per drop.

    Growth needs ``2 * inflight >= limit``: a limit that is not being used has proven
    nothing, and growing it anyway would let it drift far above what the server can take.
    """

    __slots__ = ("_limit", "_max", "_min", "_ratio", "_timeout", "clock", "options")

    @dataclasses.dataclass(frozen=True)
    class Options(LimitOptions):
        min_limit: int = option(20, "The limit never goes below this (Netflix: 20).", ge=1)
        max_limit: int = option(200, "The limit never goes above this (Netflix: 200).", ge=1)
        backoff_ratio: float = option(
            0.9, "Factor applied to the limit on a drop; in [0.5, 1).", ge=0.5
        )
        timeout: float = option(
            5.0, "Seconds; a call slower than this counts as a drop (Netflix: 5 s).", gt=0
        )

        def validate(self) -> list[str]:
            problems = super().validate()
            if self.backoff_ratio >= 1:
                problems.append(
                    f"option 'backoff_ratio' is {self.backoff_ratio!r}; expected a value "
                    "below 1 (at 1 or more a drop would never lower the limit): use e.g. 0.9"
                )
            return problems

    def __init__(self, options: AIMDLimit.Options, clock: Clock = time.monotonic) -> None:
        self.options = options
        self.clock = clock
        self._limit = options.initial_limit
        self._min = options.min_limit
        self._max = options.max_limit
        self._ratio = options.backoff_ratio
        self._timeout = options.timeout

    @property
    def limit(self) -> int:
        return self._limit

    def on_sample(self, start: float, rtt: float, inflight: int, dropped: bool) -> int:
        limit = self._limit
        if dropped or rtt > self._timeout:
            limit = int(limit * self._ratio)
        elif 2 * inflight >= limit:
            limit += 1
        else:
            return limit
        self._limit = limit = min(self._max, max(self._min, limit))
        return limit
