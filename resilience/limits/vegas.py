"""Delay-based limit after Netflix's ``VegasLimit``, itself after TCP Vegas (Brakmo and
Peterson, 1994): compare each call's RTT with the RTT of an unloaded server and read the
difference as a queue. A short queue means headroom, a long one means the server is
saturating, so the limit moves before calls start failing."""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable

from resilience.core.middleware import option
from resilience.limits.base import Clock, LimitOptions, clamp, log10_int


class VegasLimit:
    """Estimate the queue as ``limit * (1 - rtt_noload / rtt)`` and keep it between
    ``alpha`` and ``beta``; see docs/adaptive-limits.md for the exact rules.

    ``rtt_noload`` is the lowest RTT seen; it is re-measured from a single sample every
    ``probe_multiplier * limit * jitter`` samples (jitter uniform in [0.5, 1), from
    ``rand``) and, with ``min_rtt_ttl``, whenever it is older than that many seconds, so a
    server that got slower for good is not judged against a baseline it can never meet.
    """

    __slots__ = (
        "_alpha", "_beta", "_estimate", "_jitter", "_max", "_min", "_probe_count",
        "_probe_multiplier", "_smoothing", "_stamp", "_ttl", "clock", "options", "rand",
        "rtt_noload",
    )  # fmt: skip

    @dataclasses.dataclass(frozen=True)
    class Options(LimitOptions):
        max_limit: int = option(1000, "The limit never goes above this (Netflix: 1000).", ge=1)
        smoothing: float = option(
            1.0,
            "Weight of the new estimate against the old one, in (0, 1]; 1 = no smoothing.",
            gt=0,
        )
        alpha: int | None = option(
            None, "Queue below which the limit grows; unset: 3 * log10(limit).", ge=0
        )
        beta: int | None = option(
            None, "Queue above which the limit shrinks; unset: 6 * log10(limit).", ge=0
        )
        probe_multiplier: int = option(
            30, "Re-measure rtt_noload every probe_multiplier * limit * jitter samples.", ge=1
        )
        min_rtt_ttl: float | None = option(
            None, "Seconds after which rtt_noload is re-measured; unset: only by count.", gt=0
        )

        def validate(self) -> list[str]:
            problems = super().validate()
            if self.smoothing > 1:
                problems.append(
                    f"option 'smoothing' is {self.smoothing!r}; expected a value in (0, 1] "
                    "(1 takes each new estimate as is): use e.g. 1.0 or 0.5"
                )
            if self.alpha is not None and self.beta is not None and self.alpha > self.beta:
                problems.append(
                    f"option 'alpha' is {self.alpha}, above 'beta' ({self.beta}); expected "
                    "alpha <= beta (grow below alpha, shrink above beta): swap them"
                )
            return problems

    def __init__(
        self,
        options: VegasLimit.Options,
        clock: Clock = time.monotonic,
        *,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.options = options
        self.clock = clock
        self.rand = rand
        self._estimate = float(options.initial_limit)
        self._min = options.min_limit
        self._max = options.max_limit
        self._smoothing = options.smoothing
        self._alpha = options.alpha
        self._beta = options.beta
        self._probe_multiplier = options.probe_multiplier
        self._ttl = options.min_rtt_ttl
        self.rtt_noload = 0.0  # 0: not measured yet
        self._stamp = clock() if self._ttl is not None else 0.0
        self._probe_count = 0
        self._jitter = 0.5 + 0.5 * rand()

    @property
    def limit(self) -> int:
        return int(self._estimate)

    def on_sample(self, start: float, rtt: float, inflight: int, dropped: bool) -> int:
        if rtt <= 0:  # a clock that did not move says nothing about latency
            return int(self._estimate)
        estimate = self._estimate
        self._probe_count += 1
        now = self.clock() if self._ttl is not None else 0.0
        if self._probe_count >= self._jitter * self._probe_multiplier * estimate or (
            self._ttl is not None and now - self._stamp >= self._ttl
        ):
            self._jitter = 0.5 + 0.5 * self.rand()
            self._probe_count = 0
            self.rtt_noload, self._stamp = rtt, now
            return int(estimate)
        noload = self.rtt_noload
        if noload == 0 or rtt < noload:
            self.rtt_noload, self._stamp = rtt, now
            return int(estimate)

        step = log10_int(int(estimate))
        if dropped:
            new = estimate - step
        elif 2 * inflight < estimate:  # not using the limit: no evidence to move it
            return int(estimate)
        else:
            queue = math.ceil(estimate * (1 - noload / rtt))
            alpha = 3 * step if self._alpha is None else self._alpha
            beta = 6 * step if self._beta is None else self._beta
            if queue <= step:
                new = estimate + beta
            elif queue < alpha:
                new = estimate + step
            elif queue > beta:
                new = estimate - step
            else:
                return int(estimate)
        low, high = self._min, self._max
        new = clamp(new, low, high)
        s = self._smoothing
        self._estimate = estimate = clamp((1 - s) * estimate + s * new, low, high)
        return int(estimate)
