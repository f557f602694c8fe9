"""What every adaptive concurrency limit shares: the ``Limit`` protocol the limiter codes
against, the common options and Netflix's integer log10 helper.

A limit algorithm is a small pure object: it sees one finished call at a time and returns
the new limit. It takes no locks (its owner holds one around each ``on_sample``) and does
no I/O, so tests can drive it through exact sequences on a fake clock.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Protocol

from resilience.core.middleware import option

Clock = Callable[[], float]


class Limit(Protocol):
    """A concurrency limit that learns from finished calls."""

    @property
    def limit(self) -> int:
        """The current limit, always within [min_limit, max_limit] and >= 1."""
        ...

    def on_sample(self, start: float, rtt: float, inflight: int, dropped: bool) -> int:
        """Learn from one finished call and return the new limit.

        ``start`` is when it started (clock seconds), ``rtt`` its round-trip time in
        seconds, ``inflight`` the calls in flight when it started, ``dropped`` whether it
        was rejected downstream, timed out or cancelled.
        """
        ...


@dataclasses.dataclass(frozen=True)
class LimitOptions:
    """Options every algorithm has. Subclasses redeclare fields to change the defaults."""

    initial_limit: int = option(20, "Limit before any sample is seen.", ge=1)
    min_limit: int = option(1, "The limit never goes below this.", ge=1)
    max_limit: int = option(1000, "The limit never goes above this.", ge=1)

    def validate(self) -> list[str]:
        problems = []
        if self.min_limit > self.max_limit:
            problems.append(
                f"option 'min_limit' is {self.min_limit}, above 'max_limit' "
                f"({self.max_limit}); expected min_limit <= max_limit: lower min_limit "
                "or raise max_limit"
            )
        elif not self.min_limit <= self.initial_limit <= self.max_limit:
            problems.append(
                f"option 'initial_limit' is {self.initial_limit}; expected a value between "
                f"min_limit ({self.min_limit}) and max_limit ({self.max_limit}): set "
                "initial_limit inside that range or move the bounds"
            )
        return problems


def log10_int(n: int) -> int:
    """Netflix's ``Log10RootIntFunction``: ``max(1, floor(log10(n)))``, and 1 for n < 1.

    An integer step function: 1 below 100, 2 below 1000, 3 below 10000, ...
    """
    return max(1, int(math.log10(n))) if n >= 1 else 1


def clamp(value: float, low: int, high: int) -> float:
    """``value`` limited to [low, high]."""
    return low if value < low else high if value > high else value
