"""The adaptive limit algorithms against sequences worked out by hand from the formulas in
docs/adaptive-limits.md (the expected numbers are written out, not computed by the code
under test), then a property test that every limit stays within its bounds.

RTTs are chosen so that every ratio is a power-of-two fraction, exact in floating point.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience.core.options import build_options
from resilience.limits.adaptive import (
    ALGORITHMS,
    AIMDLimit,
    FixedLimit,
    Gradient2Limit,
    VegasLimit,
    log10_int,
)


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def opts(cls: Any, **values: Any) -> Any:
    options, problems = build_options(cls.Options, values)
    assert problems == []
    return options


def feed(limit: Any, samples: list[tuple[float, int, bool]]) -> list[int]:
    """(rtt, inflight, dropped) samples in order; the limit after each."""
    out = []
    for rtt, inflight, dropped in samples:
        new = limit.on_sample(0.0, rtt, inflight, dropped)
        assert new == limit.limit
        out.append(new)
    return out


# --- registry and defaults ------------------------------------------------------------------


def test_registry_names_every_algorithm() -> None:
    expected = {
        "fixed": FixedLimit,
        "aimd": AIMDLimit,
        "vegas": VegasLimit,
        "gradient2": Gradient2Limit,
    }
    assert expected == ALGORITHMS


@pytest.mark.parametrize(
    ("name", "bounds"),
    [("fixed", (20, 1, 1000)), ("aimd", (20, 20, 200)), ("vegas", (20, 1, 1000)),
     ("gradient2", (20, 20, 200))],
)  # fmt: skip
def test_defaults_are_netflix_defaults(name: str, bounds: tuple[int, int, int]) -> None:
    cls = ALGORITHMS[name]
    options = opts(cls)
    assert (options.initial_limit, options.min_limit, options.max_limit) == bounds
    assert cls(options, FakeClock()).limit == 20


def test_log10_int_is_netflix_step_function() -> None:
    assert [log10_int(n) for n in (0, 1, 9, 10, 99, 100, 999, 1000, 12345)] == [
        1, 1, 1, 1, 1, 2, 2, 3, 4,
    ]  # fmt: skip


# --- FixedLimit ------------------------------------------------------------------------------


def test_fixed_never_changes() -> None:
    limit = FixedLimit(opts(FixedLimit, initial_limit=7), FakeClock())
    assert feed(limit, [(0.1, 7, False), (9.0, 0, True), (0.001, 100, False)]) == [7, 7, 7]


# --- AIMDLimit -------------------------------------------------------------------------------


def test_aimd_exact_sequence_with_clamping() -> None:
    options = opts(
        AIMDLimit, initial_limit=10, min_limit=2, max_limit=12, backoff_ratio=0.5, timeout=1.0
    )
    limit = AIMDLimit(options, FakeClock())
    assert feed(
        limit,
        [
            (0.1, 5, False),  # 2*5 >= 10: +1 -> 11
            (0.1, 5, False),  # 2*5 < 11: unused, stays 11
            (0.1, 6, False),  # 12
            (0.1, 6, False),  # 13, clamped to max 12
            (0.1, 6, True),  # drop: int(12 * 0.5) = 6
            (2.0, 6, False),  # slower than timeout counts as a drop: 3
            (0.1, 0, True),  # int(1.5) = 1, clamped to min 2
            (1.0, 1, False),  # rtt == timeout is not a drop; 2*1 >= 2: 3
        ],
    ) == [11, 11, 12, 12, 6, 3, 2, 3]


def test_aimd_default_backoff_truncates_like_netflix() -> None:
    limit = AIMDLimit(opts(AIMDLimit, min_limit=1), FakeClock())
    # 20*0.9 = 18, 18*0.9 = 16.2, 16*0.9 = 14.4, 14*0.9 = 12.6
    assert feed(limit, [(0.1, 0, True)] * 4) == [18, 16, 14, 12]


def test_aimd_only_grows_when_the_limit_is_used() -> None:
    limit = AIMDLimit(opts(AIMDLimit), FakeClock())
    assert feed(limit, [(0.01, 9, False)] * 50) == [20] * 50  # 9 < 20/2: never used
    # 2*10 >= 20: 21; 2*10 < 21: hold; 2*11 >= 21: 22
    assert feed(limit, [(0.01, 10, False), (0.01, 10, False), (0.01, 11, False)]) == [21, 21, 22]


def test_aimd_default_min_limit_holds_under_drops() -> None:
    limit = AIMDLimit(opts(AIMDLimit), FakeClock())
    assert feed(limit, [(0.01, 20, True)] * 3) == [20, 20, 20]  # 18 -> min 20


# --- VegasLimit ------------------------------------------------------------------------------


def vegas(clock: FakeClock | None = None, **values: Any) -> VegasLimit:
    # rand() = 0 makes the probe jitter 0.5: with the default multiplier 30 a probe comes
    # after 15 * limit samples, far beyond these sequences.
    return VegasLimit(opts(VegasLimit, **values), clock or FakeClock(), rand=lambda: 0.0)


def test_vegas_exact_sequence() -> None:
    limit = vegas()
    assert feed(
        limit,
        [
            (0.375, 20, False),  # first sample only sets rtt_noload = 0.375
            (0.375, 10, False),  # queue = ceil(20*0) = 0 <= 1: + beta (6*1) -> 26
            (0.5, 13, False),  # queue = ceil(26*0.25) = 7 > beta 6: - 1 -> 25
            (0.5, 13, False),  # ceil(6.25) = 7: 24
            (0.5, 12, False),  # ceil(6) = 6, in [alpha 3, beta 6]: hold 24
            (0.5, 11, False),  # 2*11 < 24: not used, hold
            (0.375, 1, True),  # drop: - log10 -> 23, whatever the inflight
            (0.5, 12, False),  # ceil(5.75) = 6: hold 23
        ],
    ) == [20, 26, 25, 24, 24, 24, 23, 23]
    assert limit.rtt_noload == 0.375


def test_vegas_grows_by_one_in_the_alpha_band() -> None:
    limit = vegas(initial_limit=16)
    # rtt_noload 7/16, rtt 1/2: queue = ceil(limit / 8)
    assert feed(limit, [(0.4375, 16, False), (0.5, 8, False), (0.5, 9, False)]) == [16, 17, 17]
    # 16: queue 2 in (threshold 1, alpha 3): +1; 17: queue ceil(2.125) = 3: hold


def test_vegas_steps_scale_with_log10_of_the_limit() -> None:
    limit = vegas(initial_limit=100)
    # log10(100) = 2: beta = 12 on no queue; a drop takes 2 off
    assert feed(limit, [(0.25, 100, False), (0.25, 100, False), (0.25, 0, True)]) == [
        100, 112, 110,
    ]  # fmt: skip


def test_vegas_fixed_alpha_beta() -> None:
    limit = vegas(alpha=1, beta=2)
    # no queue: + beta (2); queue ceil(22*0.25) = 6 > beta: - 1
    assert feed(limit, [(0.375, 20, False), (0.375, 20, False), (0.5, 22, False)]) == [
        20, 22, 21,
    ]  # fmt: skip


def test_vegas_smoothing() -> None:
    limit = vegas(smoothing=0.5)
    # 0.5*20 + 0.5*26 = 23; then 0.5*23 + 0.5*29 = 26
    assert feed(limit, [(0.375, 0, False), (0.375, 10, False), (0.375, 12, False)]) == [
        20, 23, 26,
    ]  # fmt: skip


def test_vegas_clamps_to_min_and_max() -> None:
    high = vegas(max_limit=24)
    assert feed(high, [(0.375, 0, False), (0.375, 20, False)]) == [20, 24]  # 26 -> 24
    low = vegas(min_limit=19)
    assert feed(low, [(0.375, 0, False), (0.5, 0, True), (0.5, 0, True)]) == [20, 19, 19]


def test_vegas_probes_rtt_noload_by_count() -> None:
    limit = vegas(probe_multiplier=1)  # probe after 0.5 * 1 * 20 = 10 samples
    feed(limit, [(0.375, 0, False)] + [(0.5, 0, False)] * 8)
    assert limit.rtt_noload == 0.375
    assert feed(limit, [(0.5, 20, False)]) == [20]  # the 10th sample is the probe
    assert limit.rtt_noload == 0.5
    assert feed(limit, [(0.5, 20, False)]) == [26]  # judged against the new baseline


def test_vegas_re_measures_rtt_noload_after_ttl() -> None:
    clock = FakeClock(0.0)
    limit = vegas(clock, min_rtt_ttl=10.0)
    feed(limit, [(0.375, 0, False)])
    clock.now = 9.5
    feed(limit, [(0.5, 0, False)])
    assert limit.rtt_noload == 0.375
    clock.now = 10.0
    feed(limit, [(0.5, 0, False)])
    assert limit.rtt_noload == 0.5


def test_vegas_ignores_non_positive_rtt() -> None:
    limit = vegas()
    assert feed(limit, [(0.0, 20, True), (-1.0, 20, True)]) == [20, 20]
    assert limit.rtt_noload == 0.0


def test_vegas_decreases_under_high_rtt_and_increases_under_low_rtt() -> None:
    limit = vegas(initial_limit=50)
    feed(limit, [(0.125, 0, False)])
    down = [limit.on_sample(0.0, 0.25, limit.limit, False) for _ in range(60)]
    # queue = ceil(limit/2) > beta 6 takes 1 off per sample until the limit is 12
    assert down == list(range(49, 11, -1)) + [12] * 22
    up = [limit.on_sample(0.0, 0.125, limit.limit, False) for _ in range(30)]
    assert up == sorted(up) and up[-1] > 150


# --- Gradient2Limit --------------------------------------------------------------------------


def warm(limit: Gradient2Limit, rtt: float = 1.0) -> None:
    """The ten warm-up samples, app-limited so the limit holds: long_rtt = rtt."""
    assert feed(limit, [(rtt, 0, False)] * 10) == [limit.limit] * 10
    assert limit.long_rtt == rtt


def test_gradient2_grows_by_queue_times_smoothing_while_rtt_is_steady() -> None:
    limit = Gradient2Limit(opts(Gradient2Limit, smoothing=0.5, min_limit=1), FakeClock())
    # gradient = min(1, 1.5 * 1/1) = 1: new = 0.5*L + 0.5*(L + 4) = L + 2
    assert feed(limit, [(1.0, 20, False), (1.0, 22, False), (1.0, 5, False)]) == [22, 24, 24]


def test_gradient2_exact_sequence() -> None:
    options = opts(Gradient2Limit, min_limit=1, smoothing=0.5, long_window=7)  # factor 1/4
    limit = Gradient2Limit(options, FakeClock())
    warm(limit)
    # long = 0.75*1 + 0.25*4 = 1.75; gradient = 1.5*1.75/4 = 0.65625
    # new = 0.5*20 + 0.5*(20*0.65625 + 4) = 10 + 8.5625 = 18.5625
    assert feed(limit, [(4.0, 20, False)]) == [18]
    # long = 0.75*1.75 + 0.25*8 = 3.3125; gradient = 1.5*3.3125/8 = 0.62109375
    # new = 0.5*18.5625 + 0.5*(18.5625*0.62109375 + 4) = 17.0457763671875
    assert feed(limit, [(8.0, 18, False)]) == [17]
    # RTT back to 1: long = 0.75*3.3125 + 0.25 = 2.734375 > 2*1, so it is kept as
    # 2.734375*0.95; gradient = min(1, 1.5*2.734375) = 1: new = 17.0457... + 2
    assert feed(limit, [(1.0, 17, False)]) == [19]
    assert limit.long_rtt == pytest.approx(2.734375 * 0.95)
    # drops carry no signal of their own
    assert feed(limit, [(1.0, 0, True)]) == [19]


def test_gradient2_clamps_to_min_and_max() -> None:
    options = opts(Gradient2Limit, min_limit=19, max_limit=21, smoothing=1.0, long_window=7)
    limit = Gradient2Limit(options, FakeClock())
    warm(limit)
    # 20*1 + 4 = 24 -> 21; then long = 0.75 + 25 = 25.75, gradient = max(0.5, 0.38625):
    # 21*0.5 + 4 = 14.5 -> 19
    assert feed(limit, [(1.0, 20, False), (100.0, 21, False)]) == [21, 19]


def test_gradient2_sqrt_queue_size() -> None:
    options = opts(Gradient2Limit, initial_limit=100, smoothing=1.0, queue_size_function="sqrt")
    limit = Gradient2Limit(options, FakeClock())
    # queue = max(4, floor(sqrt(100))) = 10, then max(4, floor(sqrt(110))) = 10
    assert feed(limit, [(1.0, 100, False), (1.0, 110, False)]) == [110, 120]


def test_gradient2_converges_down_under_rising_rtt_and_recovers() -> None:
    limit = Gradient2Limit(opts(Gradient2Limit, initial_limit=150), FakeClock())
    rtt = 0.01
    down = []
    for _ in range(300):
        rtt *= 1.02
        down.append(limit.on_sample(0.0, rtt, limit.limit, False))
    # The warm-up mean follows the RTT closely, so the limit first grows; then the long
    # average lags ever further behind (gradient 0.5) and the limit falls to min_limit.
    peak = down.index(max(down))
    assert peak < 100 and down[peak:] == sorted(down[peak:], reverse=True)
    assert down[-1] == 20
    up = [limit.on_sample(0.0, 0.01, limit.limit, False) for _ in range(100)]
    assert up == sorted(up)
    # gradient 1: +queue*smoothing = +0.8 per sample
    assert 99 <= up[-1] <= 100


def test_gradient2_ignores_non_positive_rtt() -> None:
    limit = Gradient2Limit(opts(Gradient2Limit), FakeClock())
    assert feed(limit, [(0.0, 20, False)]) == [20]
    assert limit.long_rtt == 0.0


# --- validation ------------------------------------------------------------------------------


BOUNDS = "expected a value between min_limit (20) and max_limit (200)"


@pytest.mark.parametrize(
    ("cls", "values", "fragment"),
    [
        (AIMDLimit, {"backoff_ratio": 1.0}, "'backoff_ratio' is 1.0; expected a value below 1"),
        (AIMDLimit, {"backoff_ratio": 0.4}, "'backoff_ratio' is 0.4; expected a value >= 0.5"),
        (AIMDLimit, {"timeout": 0}, "option 'timeout' is 0.0; expected a value > 0"),
        (AIMDLimit, {"initial_limit": 5}, f"option 'initial_limit' is 5; {BOUNDS}"),
        (FixedLimit, {"min_limit": 50, "max_limit": 10}, "'min_limit' is 50, above 'max_limit'"),
        (VegasLimit, {"smoothing": 1.5}, "option 'smoothing' is 1.5; expected a value in (0, 1]"),
        (VegasLimit, {"smoothing": 0}, "option 'smoothing' is 0.0; expected a value > 0"),
        (VegasLimit, {"alpha": 7, "beta": 3}, "option 'alpha' is 7, above 'beta' (3)"),
        (VegasLimit, {"min_rtt_ttl": "1m"}, "option 'min_rtt_ttl' is '1m'; expected a number"),
        (Gradient2Limit, {"rtt_tolerance": 0.9}, "'rtt_tolerance' is 0.9; expected a value >= 1"),
        (Gradient2Limit, {"queue_size_function": "log"}, "expected one of 'fixed', 'sqrt'"),
        (Gradient2Limit, {"long_windw": 10}, "unknown option 'long_windw'"),
    ],
)
def test_validation_messages(cls: Any, values: dict[str, Any], fragment: str) -> None:
    options, problems = build_options(cls.Options, values)
    assert options is None
    assert any(fragment in p for p in problems), problems


# --- property: always within bounds ----------------------------------------------------------


@st.composite
def configured(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    name = draw(st.sampled_from(sorted(ALGORITHMS)))
    low = draw(st.integers(1, 50))
    high = draw(st.integers(low, 300))
    values: dict[str, Any] = {
        "min_limit": low,
        "max_limit": high,
        "initial_limit": draw(st.integers(low, high)),
    }
    if name in ("vegas", "gradient2"):
        values["smoothing"] = draw(st.floats(0.01, 1.0))
    if name == "vegas":
        values["probe_multiplier"] = draw(st.integers(1, 5))
    if name == "gradient2":
        values["long_window"] = draw(st.integers(1, 50))
        values["queue_size_function"] = draw(st.sampled_from(["fixed", "sqrt"]))
    if name == "aimd":
        values["backoff_ratio"] = draw(st.floats(0.5, 0.99))
    return name, values


samples = st.lists(
    st.tuples(
        st.floats(0.0, 30.0, allow_nan=False),
        st.integers(0, 2000),
        st.booleans(),
        st.floats(0.0, 5.0),
    ),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(configured(), samples, st.integers(0, 2**32))
def test_every_limit_stays_within_bounds(
    config: tuple[str, dict[str, Any]], seq: list[tuple[float, int, bool, float]], seed: int
) -> None:
    name, values = config
    cls = ALGORITHMS[name]
    clock = FakeClock(0.0)
    kwargs = {"rand": random.Random(seed).random} if cls is VegasLimit else {}
    limit = cls(opts(cls, **values), clock, **kwargs)
    low, high = values["min_limit"], values["max_limit"]
    for rtt, inflight, dropped, step in seq:
        clock.now += step
        new = limit.on_sample(clock.now - rtt, rtt, inflight, dropped)
        assert isinstance(new, int) and new == limit.limit
        assert low <= new <= high
