"""gRFC A6 retry throttling: a token count that failures drain and successes refill.

Each failed call takes a token and each success gives back ``token_ratio`` of one, capped
at ``max_tokens``; retries and hedges are allowed only while more than half the tokens
are left. When a backend fails every call, the count soon sits below the threshold and a
client makes one attempt per call instead of ``max_attempts``; at a low failure rate it
stays near the top and retries go on. Chosen over Envoy's budget (a share of the requests
in flight) because it also works for a client that sends one call at a time, and because
it is what gRPC itself specifies for service config.

The count is kept in integer thousandths of a token, as grpc-core keeps it
(``retry_throttle.cc``): A6 reads ``tokenRatio`` to three decimals, so every count the
rules can reach is a whole number of milli-tokens and the comparison with the threshold
is exact. With floats, five failures, five successes at 0.2 and one more failure leave
5.000000000000001 tokens of 10, and a retry goes out that A6 and grpc-core refuse.
"""

from __future__ import annotations

import math
import threading
from decimal import ROUND_DOWN, Decimal
from typing import Any

SHARED_KEY = "retry_budget"

#: gRFC A6's bound on ``maxTokens`` ("a JSON integer value in the range (0, 1000]").
MAX_TOKENS_LIMIT = 1000
#: One token, in the unit the count is kept in.
MILLI = 1000


def milli_token_ratio(token_ratio: float) -> int:
    """``token_ratio`` in thousandths of a token, digits past the third dropped, as A6 says
    ("0.5466 is treated as 0.546") and grpc-core does. Read from the number's decimal
    text, as grpc-core reads the JSON, so that 1.001 is 1001 and not the 1000 that
    ``int(1.001 * 1000)`` gives."""
    if not math.isfinite(token_ratio):
        raise ValueError(f"token_ratio {token_ratio!r} is not a finite number")
    return int(Decimal(repr(float(token_ratio))).scaleb(3).to_integral_value(ROUND_DOWN))


class RetryBudget:
    """Shared by every chain of one channel (per target), so one method's failures also
    slow the retries of the others, as A6's per-server-name throttling does.

    ``milli_tokens`` and ``max_milli_tokens`` are the count and its cap in thousandths;
    Retry reads them inline on every success. ``tokens`` is the count in tokens, for
    people and tests.
    """

    __slots__ = ("_lock", "_threshold", "max_milli_tokens", "milli_token_ratio",
                 "milli_tokens")

    def __init__(self, max_tokens: int = 10, token_ratio: float = 0.1) -> None:
        if max_tokens != int(max_tokens) or not 0 < max_tokens <= MAX_TOKENS_LIMIT:
            raise ValueError(
                f"max_tokens {max_tokens!r} is not a whole number from 1 to {MAX_TOKENS_LIMIT}"
            )
        ratio = milli_token_ratio(token_ratio)
        if ratio <= 0:
            raise ValueError(f"token_ratio {token_ratio!r} is 0 read to three decimals")
        self.max_milli_tokens = int(max_tokens) * MILLI
        self.milli_token_ratio = ratio
        self.milli_tokens = self.max_milli_tokens
        # A6's threshold, maxTokens / 2, is a whole number of milli-tokens.
        self._threshold = self.max_milli_tokens // 2
        self._lock = threading.Lock()

    @property
    def tokens(self) -> float:
        return self.milli_tokens / MILLI

    @property
    def max_tokens(self) -> int:
        return self.max_milli_tokens // MILLI

    @property
    def token_ratio(self) -> float:
        return self.milli_token_ratio / MILLI

    def allows_retry(self) -> bool:
        """May another attempt (a retry or a hedge) be sent now? Only while the count is
        above half of ``max_tokens`` (A6: "less than or equal to the threshold" stops)."""
        return self.milli_tokens > self._threshold

    def record_failure(self) -> bool:
        """Take a token (not below 0); return whether a retry is still allowed, judged on
        the count this failure left, in the same step, as grpc-core's RecordFailure."""
        with self._lock:
            tokens = self.milli_tokens - MILLI
            if tokens < 0:
                tokens = 0
            self.milli_tokens = tokens
        return tokens > self._threshold

    def record_success(self) -> None:
        """Give back ``token_ratio`` of a token, up to ``max_tokens``."""
        if self.milli_tokens < self.max_milli_tokens:  # a full budget takes no lock
            with self._lock:
                tokens = self.milli_tokens + self.milli_token_ratio
                self.milli_tokens = min(tokens, self.max_milli_tokens)

    def __repr__(self) -> str:
        return (f"<RetryBudget {self.milli_tokens}/{self.max_milli_tokens} milli-tokens, "
                f"+{self.milli_token_ratio} per success>")


def shared_budget(shared: dict[str, Any], max_tokens: int, token_ratio: float) -> RetryBudget:
    """The one budget of a channel (``ChainInfo.shared``), made by the first chain that asks.

    Retry and Hedging both draw on it, so that together they stay inside A6's throttle;
    later callers get the existing budget whatever numbers they pass.
    """
    budget = shared.get(SHARED_KEY)
    if budget is None:
        budget = shared.setdefault(SHARED_KEY, RetryBudget(max_tokens, token_ratio))
    return budget


def budget_problems(max_tokens: int, token_ratio: float) -> list[str]:
    """What is wrong with budget options, for Retry's and Hedging's ``validate``.

    A6 bounds ``maxTokens`` to (0, 1000] and asks only that ``tokenRatio`` be above 0;
    its digits past the third are ignored (not an error), so a ratio is refused only if
    nothing is left of it once read to three decimals. The option types and their
    ``gt=0`` bounds catch the rest (a fractional ``maxTokens``, a ratio of 0 or less).
    """
    problems = []
    if max_tokens > MAX_TOKENS_LIMIT:
        problems.append(
            f"budget_max_tokens {max_tokens} is above {MAX_TOKENS_LIMIT}, gRFC A6's limit "
            f"for maxTokens; use a whole number from 1 to {MAX_TOKENS_LIMIT}"
        )
    if not math.isfinite(token_ratio):
        problems.append(f"budget_token_ratio {token_ratio} is not a finite number")
    elif token_ratio > 0 and milli_token_ratio(token_ratio) == 0:
        problems.append(
            f"budget_token_ratio {token_ratio} is 0 read to three decimals, as gRFC A6 "
            f"reads tokenRatio; use 0.001 or more"
        )
    return problems
