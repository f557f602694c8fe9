"""gRFC A6 retry throttling: a token count that failures drain and successes refill.

Each failed call takes a token and each success gives back ``token_ratio`` of one, capped
at ``max_tokens``; retries and hedges are allowed only while more than half the tokens
are left. When a backend fails every call, the count soon sits below the threshold and a
client makes one attempt per call instead of ``max_attempts``; at a low failure rate it
stays near the top and retries go on. Chosen over Envoy's budget (a share of the requests
in flight) because it also works for a client that sends one call at a time, and because
it is what gRPC itself specifies for service config.
"""

from __future__ import annotations

import threading
from typing import Any

SHARED_KEY = "retry_budget"


class RetryBudget:
    """Shared by every chain of one channel (per target), so one method's failures also
    slow the retries of the others, as A6's per-server-name throttling does."""

    __slots__ = ("_lock", "max_tokens", "token_ratio", "tokens")

    def __init__(self, max_tokens: float = 10.0, token_ratio: float = 0.1) -> None:
        self.max_tokens = float(max_tokens)
        self.token_ratio = float(token_ratio)
        self.tokens = self.max_tokens
        self._lock = threading.Lock()

    def allows_retry(self) -> bool:
        """May another attempt (a retry or a hedge) be sent now?"""
        return self.tokens > self.max_tokens / 2

    def record_failure(self) -> None:
        with self._lock:
            self.tokens = max(0.0, self.tokens - 1.0)

    def record_success(self) -> None:
        if self.tokens < self.max_tokens:  # a full budget, the usual case, takes no lock
            with self._lock:
                self.tokens = min(self.max_tokens, self.tokens + self.token_ratio)


def shared_budget(shared: dict[str, Any], max_tokens: float, token_ratio: float) -> RetryBudget:
    """The one budget of a channel (``ChainInfo.shared``), made by the first chain that asks.

    Retry and Hedging both draw on it, so that together they stay inside A6's throttle;
    later callers get the existing budget whatever numbers they pass.
    """
    budget = shared.get(SHARED_KEY)
    if budget is None:
        budget = shared.setdefault(SHARED_KEY, RetryBudget(max_tokens, token_ratio))
    return budget


#: gRFC A6's bounds on a retry throttling policy.
MAX_TOKENS_LIMIT = 1000
TOKEN_RATIO_LIMIT = 1.0


def budget_problems(max_tokens: float, token_ratio: float) -> list[str]:
    """What is wrong with budget options, for Retry's and Hedging's ``validate``."""
    problems = []
    if max_tokens > MAX_TOKENS_LIMIT:
        problems.append(
            f"budget_max_tokens {max_tokens} is above {MAX_TOKENS_LIMIT} (gRFC A6's limit); "
            f"use a value in (0, {MAX_TOKENS_LIMIT}]"
        )
    if token_ratio > TOKEN_RATIO_LIMIT:
        problems.append(
            f"budget_token_ratio {token_ratio} is above {TOKEN_RATIO_LIMIT:g} (gRFC A6's "
            f"limit); use a value in (0, 1]"
        )
    return problems
