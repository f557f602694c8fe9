"""What Retry and Hedging share: the options that decide whether a call may be sent again."""

from __future__ import annotations

import dataclasses

from resilience.core.middleware import MiddlewareOptions, option
from resilience.limits.retry_budget import budget_problems


@dataclasses.dataclass(frozen=True)
class AttemptOptions(MiddlewareOptions):
    """Idempotency and the channel's retry budget (gRFC A6 retry throttling), which Retry
    and Hedging draw on together."""

    non_idempotent: bool = option(
        False,
        "Repeat methods not marked idempotent too; otherwise the middleware leaves itself "
        "out of their chains.",
    )
    budget: bool = option(
        True,
        "Draw extra attempts (retries and hedges) from the channel's retry budget, so a "
        "failing server gets about one attempt per call.",
    )
    budget_max_tokens: float = option(
        10.0, "Tokens in the channel's budget; extra attempts stop at half or below.", gt=0
    )
    budget_token_ratio: float = option(
        0.1, "Tokens a success gives back; each failed attempt takes 1.", gt=0
    )

    def validate(self) -> list[str]:
        return budget_problems(self.budget_max_tokens, self.budget_token_ratio)
