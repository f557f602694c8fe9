"""The saturation decision on its own: exact sample sequences, no servers, no sleeping."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from resilience.core.call import CallKind
from resilience.core.middleware import ChainInfo
from resilience.limits.saturation import SaturationTracker
from resilience.middleware import ConcurrencyLimit, RequestLogging
from resilience.transport.health import (
    MAX_INTERVAL_S,
    MIN_INTERVAL_S,
    _Sampler,
    sample_interval,
    stack_limiters,
)


def run(tracker: SaturationTracker, samples: list[tuple[bool, float]]) -> list[bool | None]:
    return [tracker.update(saturated, now) for saturated, now in samples]


def test_reports_once_saturated_for_the_whole_period_and_recovers_at_once() -> None:
    tracker = SaturationTracker(1.0)
    changes = run(tracker, [(True, 0.0), (True, 0.5), (True, 0.99), (True, 1.0), (True, 1.5),
                            (False, 1.6), (False, 1.7)])
    assert changes == [None, None, None, True, None, False, None]


def test_one_unsaturated_sample_restarts_the_period() -> None:
    tracker = SaturationTracker(1.0)
    changes = run(tracker, [(True, 0.0), (True, 0.9), (False, 0.95), (True, 1.0), (True, 1.9),
                            (True, 2.0)])
    assert changes == [None, None, None, None, None, True]
    assert tracker.overloaded


def test_never_saturated_never_reports() -> None:
    tracker = SaturationTracker(0.1)
    assert run(tracker, [(False, t / 10) for t in range(20)]) == [None] * 20
    with pytest.raises(ValueError):
        SaturationTracker(0)


@dataclass
class FakeLimiter:
    in_flight: int
    limit: int


def test_sampler_reads_every_limiter() -> None:
    limiters = [FakeLimiter(1, 5), FakeLimiter(0, 5)]
    now = [0.0]
    sampler = _Sampler(0.5, lambda: limiters, clock=lambda: now[0])
    assert sampler.sample() is None
    limiters[1].in_flight = 5  # one full limiter (scope = "method") is enough
    assert sampler.sample() is None
    now[0] = 0.5
    assert sampler.sample() is True
    limiters[1].in_flight = 4
    assert sampler.sample() is False


def test_stack_limiters_picks_the_limiters_of_built_stacks() -> None:
    def make(cls: type) -> object:
        info = ChainInfo("s.S/M", CallKind.UNARY_UNARY, "server", cls.__name__, {})
        return cls(lambda call: None, cls.Options(), info)

    limit, logging = make(ConcurrencyLimit), make(RequestLogging)
    assert stack_limiters({"s.S/M": [logging, limit], "s.S/N": []}) == [limit]  # type: ignore[list-item]


def test_sample_interval_is_a_fifth_within_bounds() -> None:
    assert sample_interval(0.5) == pytest.approx(0.1)
    assert sample_interval(0.001) == MIN_INTERVAL_S
    assert sample_interval(60) == MAX_INTERVAL_S
