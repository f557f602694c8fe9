"""How long to wait between attempts: pure policies, no sleeping and no I/O.

Keeping the arithmetic apart from the retry loop lets it be tested exactly and reused by
anything else that backs off (reconnects, health probes). Randomness comes in through the
``rng`` argument so tests can pin it.
"""

from __future__ import annotations

import random
from typing import Any, Literal

Strategy = Literal["exponential", "fibonacci", "constant"]
Jitter = Literal["full", "none"]

STRATEGIES: tuple[Strategy, ...] = ("exponential", "fibonacci", "constant")
JITTERS: tuple[Jitter, ...] = ("full", "none")


class Backoff:
    """A backoff policy, built once and asked for a delay before every retry.

    Uncapped, retry ``n`` waits ``initial * multiplier**(n-1)`` (exponential),
    ``initial * fib(n)`` with fib = 1, 1, 2, 3, 5, ... (fibonacci) or ``initial``
    (constant); every strategy is then capped at ``maximum``. Full jitter waits a uniform
    time in ``[0, capped]`` so that clients that failed together do not retry together.
    """

    __slots__ = ("_fibonacci", "initial", "jitter", "maximum", "multiplier", "strategy")

    def __init__(
        self,
        strategy: Strategy = "exponential",
        *,
        initial: float = 0.05,
        maximum: float = 1.0,
        multiplier: float = 2.0,
        jitter: Jitter = "full",
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown backoff strategy {strategy!r}; use one of {STRATEGIES}")
        if jitter not in JITTERS:
            raise ValueError(f"unknown jitter {jitter!r}; use one of {JITTERS}")
        if not 0 < initial <= maximum:
            raise ValueError(f"need 0 < initial <= maximum, got {initial} and {maximum}")
        if multiplier < 1:
            raise ValueError(f"multiplier {multiplier} would shrink the backoff; use >= 1")
        self.strategy = strategy
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
        self.jitter = jitter
        self._fibonacci = self._fibonacci_table() if strategy == "fibonacci" else ()

    @classmethod
    def from_options(cls, options: Any) -> Backoff:
        """Build from anything with Retry's option names (``backoff``, ``initial_backoff``...)."""
        return cls(
            options.backoff,
            initial=options.initial_backoff,
            maximum=options.max_backoff,
            multiplier=options.multiplier,
            jitter=options.jitter,
        )

    def _fibonacci_table(self) -> tuple[float, ...]:
        # Floats, so the sequence reaches inf instead of raising; it hits the cap within
        # about 1,500 terms whatever the options are.
        table = []
        previous, current = 0.0, 1.0
        while self.initial * current < self.maximum:
            table.append(self.initial * current)
            previous, current = current, previous + current
        return tuple(table)

    def cap(self, retry_number: int) -> float:
        """The delay before retry ``retry_number`` without jitter (1 = before attempt 2)."""
        if retry_number < 1:
            raise ValueError(f"retry_number starts at 1, got {retry_number}")
        if self.strategy == "constant":
            return self.initial
        if self.strategy == "fibonacci":
            table = self._fibonacci
            return table[retry_number - 1] if retry_number <= len(table) else self.maximum
        try:
            raw = self.initial * self.multiplier ** (retry_number - 1)
        except OverflowError:
            return self.maximum
        return min(raw, self.maximum)

    def delay(self, retry_number: int, rng: random.Random) -> float:
        """Seconds to wait before retry ``retry_number``, jitter applied."""
        capped = self.cap(retry_number)
        return rng.uniform(0.0, capped) if self.jitter == "full" else capped

    def __repr__(self) -> str:
        return (
            f"<Backoff {self.strategy} initial={self.initial} maximum={self.maximum} "
            f"multiplier={self.multiplier} jitter={self.jitter}>"
        )
