"""The A6 retry budget against hand-computed sequences."""

from __future__ import annotations

import pytest

from resilience.limits.retry_budget import RetryBudget


def test_starts_full_and_allows_retries() -> None:
    budget = RetryBudget(max_tokens=10, token_ratio=0.1)
    assert budget.tokens == 10
    assert budget.allows_retry()


def test_failures_drain_it_below_half_then_retries_stop() -> None:
    budget = RetryBudget(max_tokens=10, token_ratio=0.1)
    allowed = []
    for _ in range(7):
        budget.record_failure()
        allowed.append(budget.allows_retry())
    # 9, 8, 7, 6 are above 5; 5 is not (A6: strictly more than half); 4, 3 neither.
    assert allowed == [True, True, True, True, False, False, False]
    for _ in range(20):
        budget.record_failure()
    assert budget.tokens == 0


def test_successes_refill_by_the_ratio_up_to_the_cap() -> None:
    budget = RetryBudget(max_tokens=10, token_ratio=0.5)
    for _ in range(5):
        budget.record_failure()
    assert not budget.allows_retry()
    budget.record_success()
    assert budget.tokens == pytest.approx(5.5)
    assert budget.allows_retry()
    for _ in range(100):
        budget.record_success()
    assert budget.tokens == 10


def test_one_percent_failures_keep_retries_going() -> None:
    budget = RetryBudget(max_tokens=10, token_ratio=0.1)
    allowed = 0
    for n in range(10_000):
        if n % 100 == 0:
            budget.record_failure()
            allowed += budget.allows_retry()
        else:
            budget.record_success()
    assert allowed == 100
