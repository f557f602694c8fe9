import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience.backoff import Backoff


def delays(backoff: Backoff, count: int) -> list[float]:
    rng = random.Random(0)
    return [backoff.delay(n, rng) for n in range(1, count + 1)]


def test_exponential_sequence():
    backoff = Backoff("exponential", initial=0.1, maximum=1.0, multiplier=2.0, jitter="none")
    assert delays(backoff, 6) == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_fibonacci_sequence():
    backoff = Backoff("fibonacci", initial=0.1, maximum=0.6, jitter="none")
    assert delays(backoff, 7) == pytest.approx([0.1, 0.1, 0.2, 0.3, 0.5, 0.6, 0.6])


def test_constant_sequence():
    backoff = Backoff("constant", initial=0.25, maximum=1.0, multiplier=3.0, jitter="none")
    assert delays(backoff, 4) == [0.25, 0.25, 0.25, 0.25]


def test_huge_retry_numbers_stay_at_the_cap():
    for strategy in ("exponential", "fibonacci"):
        backoff = Backoff(strategy, initial=1e-300, maximum=5.0, multiplier=10.0, jitter="none")
        assert backoff.delay(100_000, random.Random()) == 5.0


def test_multiplier_one_is_constant():
    backoff = Backoff("exponential", initial=0.3, maximum=1.0, multiplier=1.0, jitter="none")
    assert delays(backoff, 3) == [0.3, 0.3, 0.3]


def test_from_options_reads_retry_names():
    from resilience.middleware.retry import Retry

    options = Retry.Options(backoff="constant", initial_backoff=0.2, jitter="none")
    assert Backoff.from_options(options).delay(5, random.Random()) == 0.2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"strategy": "linear"},
        {"jitter": "half"},
        {"initial": 0.0},
        {"initial": 2.0, "maximum": 1.0},
        {"multiplier": 0.5},
    ],
)
def test_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        Backoff(**kwargs)


def test_retry_number_starts_at_one():
    with pytest.raises(ValueError):
        Backoff().delay(0, random.Random())


@given(
    strategy=st.sampled_from(["exponential", "fibonacci", "constant"]),
    initial=st.floats(min_value=1e-6, max_value=10.0),
    spread=st.floats(min_value=1.0, max_value=1000.0),
    multiplier=st.floats(min_value=1.0, max_value=10.0),
    retry_number=st.integers(min_value=1, max_value=10_000),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_full_jitter_stays_within_cap(strategy, initial, spread, multiplier, retry_number, seed):
    maximum = initial * spread
    jittered = Backoff(
        strategy, initial=initial, maximum=maximum, multiplier=multiplier, jitter="full"
    )
    cap = jittered.cap(retry_number)
    assert cap <= maximum
    assert 0.0 <= jittered.delay(retry_number, random.Random(seed)) <= cap
