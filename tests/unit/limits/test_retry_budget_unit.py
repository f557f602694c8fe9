"""The A6 retry budget, step by step in exact milli-token counts, and side by side with a
reference model written from gRFC A6's text.

A6 ("Throttling Retry Attempts and Hedged RPCs", "Validation of retryThrottling"): the
count starts at ``maxTokens`` and stays in ``[0, maxTokens]``; a failure takes 1, a
success adds ``tokenRatio``; retries and hedges go only while the count is above
``maxTokens / 2``. ``maxTokens`` is an integer in (0, 1000]; ``tokenRatio`` is above 0 and
"decimal places beyond 3 are ignored (eg. 0.5466 is treated as 0.546)".
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience.limits.retry_budget import RetryBudget, budget_problems, milli_token_ratio


class A6Model:
    """The token count as A6's text states it, in exact rationals: no milli-tokens, no
    floats, nothing shared with ``RetryBudget``."""

    def __init__(self, max_tokens: int, token_ratio_text: str) -> None:
        ratio = Fraction(token_ratio_text)  # the decimal as written, exactly
        self.ratio = Fraction(math.floor(ratio * 1000), 1000)  # digits past 3 ignored
        self.max = Fraction(max_tokens)
        self.count = self.max

    def failure(self) -> None:
        self.count = max(Fraction(0), self.count - 1)

    def success(self) -> None:
        self.count = min(self.max, self.count + self.ratio)

    def allows_retry(self) -> bool:
        return self.count > self.max / 2


def test_starts_full_and_allows_retries() -> None:
    budget = RetryBudget(max_tokens=10, token_ratio=0.1)
    assert (budget.milli_tokens, budget.max_milli_tokens, budget.milli_token_ratio) == (
        10_000, 10_000, 100)
    assert budget.tokens == 10
    assert budget.allows_retry()


def test_failures_drain_it_below_half_then_retries_stop() -> None:
    budget = RetryBudget(max_tokens=10, token_ratio=0.1)
    steps = []
    for _ in range(7):
        allowed = budget.record_failure()
        assert allowed is budget.allows_retry()  # the answer is the count it left
        steps.append((budget.milli_tokens, allowed))
    # 9, 8, 7, 6 are above 5; 5 is not (A6: strictly more than half); 4, 3 neither.
    assert steps == [(9000, True), (8000, True), (7000, True), (6000, True),
                     (5000, False), (4000, False), (3000, False)]
    for _ in range(20):
        budget.record_failure()
    assert budget.milli_tokens == 0  # never below 0


def test_successes_refill_by_the_ratio_up_to_the_cap() -> None:
    budget = RetryBudget(max_tokens=10, token_ratio=0.5)
    for _ in range(5):
        budget.record_failure()
    assert budget.milli_tokens == 5000 and not budget.allows_retry()
    budget.record_success()
    assert budget.milli_tokens == 5500 and budget.allows_retry()
    for _ in range(100):
        budget.record_success()
    assert budget.milli_tokens == 10_000  # never above max_tokens


def test_the_float_sequence_that_allowed_a_retry_a6_refuses() -> None:
    """Five failures, five successes at 0.2, one failure: exactly 5 of 10 tokens, which is
    not above the threshold. As floats the count was 5.000000000000001 and allowed it."""
    budget = RetryBudget(max_tokens=10, token_ratio=0.2)
    counts = []
    for _ in range(5):
        budget.record_failure()
        counts.append(budget.milli_tokens)
    for _ in range(5):
        budget.record_success()
        counts.append(budget.milli_tokens)
    allowed = budget.record_failure()
    counts.append(budget.milli_tokens)
    assert counts == [9000, 8000, 7000, 6000, 5000,
                      5200, 5400, 5600, 5800, 6000,
                      5000]
    assert allowed is False and not budget.allows_retry()
    # What the float arithmetic gave: the reason for milli-tokens.
    tokens = 10.0 - 5 + 0.2 + 0.2 + 0.2 + 0.2 + 0.2 - 1
    assert tokens == 5.000000000000001 and tokens > 10 / 2


def test_one_percent_failures_keep_retries_going() -> None:
    budget = RetryBudget(max_tokens=10, token_ratio=0.1)
    allowed = 0
    for n in range(10_000):
        if n % 100 == 0:
            allowed += budget.record_failure()
        else:
            budget.record_success()
    assert allowed == 100


@pytest.mark.parametrize(("ratio", "milli"), [
    (0.1, 100), (0.2, 200), (0.57, 570), (1.001, 1001), (1.0, 1000), (1, 1000), (2.5, 2500),
    (0.5466, 546), (0.0019, 1), (0.999999, 999), (1e-3, 1), (0.0004, 0), (12.3456, 12345),
])
def test_the_ratio_is_read_to_three_decimals_and_truncated(ratio: float, milli: int) -> None:
    """As A6 says and grpc-core does (it parses the JSON text, cutting digits past the third).
    From the number's decimal text, so 1.001 is 1001, not int(1.001 * 1000) = 1000."""
    assert int(1.001 * 1000) == 1000
    assert milli_token_ratio(ratio) == milli


def test_bad_numbers_are_refused_by_the_budget_itself() -> None:
    for max_tokens in (0, 1001, 10.5, -1):
        with pytest.raises(ValueError, match="max_tokens"):
            RetryBudget(max_tokens=max_tokens)  # type: ignore[arg-type]
    for ratio in (0.0004, 0.0, -0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="token_ratio"):
            RetryBudget(token_ratio=ratio)


def test_budget_problems_follow_a6_bounds() -> None:
    assert budget_problems(1000, 0.001) == []
    assert budget_problems(1, 50.0) == []  # A6 and grpc-core set no upper bound on the ratio
    assert budget_problems(1001, 0.1) == [
        "budget_max_tokens 1001 is above 1000, gRFC A6's limit for maxTokens; use a whole "
        "number from 1 to 1000"]
    assert budget_problems(10, 0.0009) == [
        "budget_token_ratio 0.0009 is 0 read to three decimals, as gRFC A6 reads "
        "tokenRatio; use 0.001 or more"]


# Ratios from 0.001 up with up to five decimals, so that truncation is exercised too.
_RATIOS = st.integers(100, 300_000).map(lambda n: n / 100_000)


@settings(derandomize=True, max_examples=300, deadline=None)
@given(max_tokens=st.integers(1, 1000), ratio=_RATIOS,
       events=st.lists(st.booleans(), max_size=400))
def test_side_by_side_with_the_a6_model(max_tokens: int, ratio: float,
                                        events: list[bool]) -> None:
    """Every step of a random sequence of successes (True) and failures (False): the same
    count, exactly, and the same answer to "may a retry go?"."""
    budget = RetryBudget(max_tokens, ratio)
    model = A6Model(max_tokens, repr(ratio))
    for success in events:
        if success:
            budget.record_success()
            model.success()
        else:
            allowed = budget.record_failure()
            model.failure()
            assert allowed is model.allows_retry()
        assert Fraction(budget.milli_tokens, 1000) == model.count
        assert budget.allows_retry() is model.allows_retry()


@settings(derandomize=True, max_examples=60, deadline=None)
@given(max_tokens=st.integers(1, 20), ratio=st.integers(1_000, 300_000).map(lambda n: n / 100_000))
def test_long_failure_and_recovery_cycles_match_the_model(max_tokens: int, ratio: float
                                                          ) -> None:
    """Drain to 0, refill to the cap, several times over: no drift, however many steps."""
    budget = RetryBudget(max_tokens, ratio)
    model = A6Model(max_tokens, repr(ratio))
    refill = math.ceil(max_tokens / model.ratio)
    for _ in range(3):
        for _ in range(max_tokens + 2):
            budget.record_failure()
            model.failure()
        assert budget.milli_tokens == 0 and model.count == 0
        for _ in range(refill - 1):
            budget.record_success()
            model.success()
            assert budget.allows_retry() is model.allows_retry()
        assert Fraction(budget.milli_tokens, 1000) == model.count < model.max
        budget.record_success()
        model.success()
        assert budget.milli_tokens == budget.max_milli_tokens and model.count == model.max
