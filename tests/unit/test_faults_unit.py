"""FaultInjection without a network: the seeded decider, the metadata parsers, option
validation, and both middleware paths against fake handlers."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from resilience.core.call import Call, CallKind
from resilience.core.errors import MiddlewareNotUsed, RpcStatusError
from resilience.core.middleware import ChainInfo
from resilience.core.options import build_options
from resilience.faults import Fault, FaultDecider, parse_delay_ms, parse_status
from resilience.middleware import FaultInjection

METHOD = "cache.CacheService/Get"
UNARY = CallKind.UNARY_UNARY
STREAM = CallKind.UNARY_STREAM
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
NOT_FOUND = grpc.StatusCode.NOT_FOUND


class Draws:
    """A stand-in for ``random.Random`` that returns scripted draws and records the calls."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)
        self.calls: list[str] = []

    def random(self) -> float:
        self.calls.append("random")
        return self.values.pop(0)

    def uniform(self, low: float, high: float) -> float:
        self.calls.append("uniform")
        return low + (high - low) * self.values.pop(0)


def decider(rng: Any, **options: Any) -> FaultDecider:
    return FaultDecider(rng=rng, **options)


# The decider


def test_abort_draws_below_the_fraction_abort_and_the_rest_pass():
    rng = Draws(0.29, 0.3, 0.31, 0.0)
    d = decider(rng, abort_fraction=0.3, abort_code=NOT_FOUND)
    assert [d.decide() for _ in range(4)] == [
        Fault(0.0, NOT_FOUND), None, None, Fault(0.0, NOT_FOUND)
    ]
    assert rng.calls == ["random"] * 4


def test_delay_is_drawn_before_abort_and_a_range_draws_its_length():
    rng = Draws(0.1, 0.5, 0.05, 0.9, 0.2, 0.99)
    d = decider(rng, abort_fraction=0.3, delay_fraction=0.5, delay_min=1.0, delay_max=3.0)
    # call 1: delayed (0.1 < 0.5) for 1 + 2 * 0.5 = 2 s, then aborted (0.05 < 0.3)
    # call 2: not delayed (0.9), aborted (0.2); call 3: neither (0.99 and no draws left
    # would fail the test if a fraction of 0 drew)
    assert d.decide() == Fault(2.0, UNAVAILABLE)
    assert d.decide() == Fault(0.0, UNAVAILABLE)
    assert rng.calls == ["random", "uniform", "random", "random", "random"]


def test_a_fixed_delay_draws_no_length_and_a_zero_fraction_draws_nothing():
    rng = Draws(0.4)
    d = decider(rng, delay_fraction=0.5, delay_min=0.2, delay_max=0.2)
    assert d.decide() == Fault(0.2, None)
    assert rng.calls == ["random"]
    untouched = Draws()
    assert decider(untouched).decide() is None
    assert untouched.calls == []


def test_requests_from_metadata_replace_the_draw_of_their_kind():
    rng = Draws()
    d = decider(rng, abort_fraction=1.0, delay_fraction=1.0, delay_min=5.0, delay_max=5.0)
    assert d.decide(abort=NOT_FOUND, delay=0.2) == Fault(0.2, NOT_FOUND, requested=True)
    assert d.decide(abort=NOT_FOUND, delay=0.0) == Fault(0.0, NOT_FOUND, requested=True)
    assert rng.calls == []
    assert decider(Draws()).decide(delay=0.0) is None


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 0.9])
def test_fractions_hold_over_ten_thousand_seeded_decisions(fraction: float):
    n = 10_000
    d = decider(random.Random(1234), abort_fraction=fraction, delay_fraction=fraction,
                delay_min=0.1, delay_max=0.3)
    faults = [d.decide() for _ in range(n)]
    aborts = sum(1 for f in faults if f is not None and f.abort is not None)
    delays = [f.delay for f in faults if f is not None and f.delay]
    assert abs(aborts / n - fraction) <= 0.015
    assert abs(len(delays) / n - fraction) <= 0.015
    assert all(0.1 <= delay <= 0.3 for delay in delays)


def test_the_same_seed_makes_the_same_decisions_and_another_seed_does_not():
    def run(seed: int) -> list[Fault | None]:
        d = decider(random.Random(seed), abort_fraction=0.2, delay_fraction=0.3,
                    delay_min=0.0, delay_max=1.0)
        return [d.decide() for _ in range(1000)]

    assert run(42) == run(42)
    assert run(42) != run(43)


def test_fault_kinds_name_what_happens():
    assert Fault(0.1, None).kind == "delay"
    assert Fault(0.0, UNAVAILABLE).kind == "abort"
    assert Fault(0.1, UNAVAILABLE).kind == "delay+abort"


def test_the_decider_refuses_impossible_settings():
    with pytest.raises(ValueError, match="between 0 and 1"):
        decider(random.Random(), abort_fraction=1.5)
    with pytest.raises(ValueError, match="delay_min <= delay_max"):
        decider(random.Random(), delay_min=2.0, delay_max=1.0)
    with pytest.raises(ValueError, match="OK"):
        decider(random.Random(), abort_code=grpc.StatusCode.OK)


# Metadata values


@pytest.mark.parametrize(
    ("value", "code"),
    [("NOT_FOUND", NOT_FOUND), ("not_found", NOT_FOUND), (" UNAVAILABLE ", UNAVAILABLE),
     ("5", NOT_FOUND), (b"14", UNAVAILABLE), ("16", grpc.StatusCode.UNAUTHENTICATED)],
)
def test_abort_values_are_status_names_or_numbers(value: Any, code: grpc.StatusCode):
    assert parse_status(value) is code


@pytest.mark.parametrize("value", ["OK", "0", "17", "nope", "", "-1", "²"])
def test_other_abort_values_are_refused_with_what_was_expected(value: str):
    with pytest.raises(ValueError, match="expected a status name such as 'UNAVAILABLE'"):
        parse_status(value)


def test_delay_values_are_whole_milliseconds():
    assert parse_delay_ms("200") == 0.2
    assert parse_delay_ms(b"0") == 0.0
    for bad in ("-5", "1.5", "abc", ""):
        with pytest.raises(ValueError, match="expected whole milliseconds"):
            parse_delay_ms(bad)


# Options


def problems(**values: Any) -> list[str]:
    options, found = build_options(FaultInjection.Options, values)
    assert (options is None) == bool(found)
    return found


def test_defaults_and_sensible_settings_are_valid():
    assert problems() == []
    assert problems(abort_fraction=0.1, abort_code="NOT_FOUND", seed=7) == []
    assert problems(delay_fraction=1, delay_seconds=0.2) == []
    assert problems(delay_fraction=0.5, delay_min_seconds=0, delay_max_seconds=0.5) == []
    assert problems(methods=["cache.CacheService/Get"], allow_metadata=True) == []
    options, _ = build_options(FaultInjection.Options, {"abort_code": "not_found"})
    assert options is not None and options.abort_code is NOT_FOUND


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"abort_fraction": 1.5},
         "abort_fraction is 1.5; expected a fraction between 0 and 1"),
        ({"delay_fraction": 2, "delay_seconds": 1},
         "delay_fraction is 2.0; expected a fraction between 0 and 1"),
        ({"abort_fraction": -0.1}, "option 'abort_fraction' is -0.1; expected a value >= 0"),
        ({"abort_code": "NOPE"},
         "option 'abort_code' is 'NOPE'; expected a status code name such as 'UNAVAILABLE'"),
        ({"abort_code": "OK"}, "abort_code is 'OK'; an abort needs an error status"),
        ({"delay_min_seconds": 2.0, "delay_max_seconds": 1.0},
         "delay_min_seconds (2.0) is above delay_max_seconds (1.0); swap them"),
        ({"delay_min_seconds": 0.5},
         "delay_min_seconds is 0.5 and delay_max_seconds is None; a random delay needs both"),
        ({"delay_seconds": 1, "delay_max_seconds": 2},
         "delay_seconds (1.0) is set together with delay_min_seconds/delay_max_seconds"),
        ({"delay_fraction": 0.5},
         "delay_fraction is 0.5 but no delay is set; set delay_seconds"),
        ({"delay_seconds": 0}, "option 'delay_seconds' is 0.0; expected a value > 0"),
        ({"methods": ["Get"]}, "methods has 'Get'; expected a full method name"),
        ({"abort_header": "X-Fault"}, "abort_header is 'X-Fault'; expected a lower-case"),
        ({"delay_header": "x-delay-bin"}, "delay_header is 'x-delay-bin'; expected a lower-case"),
        ({"seed": "abc"}, "option 'seed' is 'abc'; expected a whole number"),
    ],
)
def test_bad_options_are_refused_with_clear_messages(values: dict[str, Any], message: str):
    found = problems(**values)
    assert any(message in line for line in found), found


# The middleware, sync path


def make(handler: Any, kind: CallKind = UNARY, side: str = "client", is_async: bool = False,
         method: str = METHOD, **options: Any) -> FaultInjection:
    info = ChainInfo(method, kind, side, "FaultInjection", {}, "cache:50051", is_async)
    built, found = build_options(FaultInjection.Options, options)
    assert built is not None, found
    return FaultInjection(handler, built, info)


def call_of(kind: CallKind = UNARY, side: str = "client", deadline: float | None = None,
            metadata: tuple[tuple[str, str], ...] = (), context: Any = None) -> Call:
    return Call(METHOD, kind, side, "req", metadata=metadata, deadline=deadline,
                context=context)


class Handler:
    """A sync terminal that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, call: Call) -> Any:
        self.calls += 1
        return "ok"


def test_left_out_of_chains_it_could_never_fault():
    with pytest.raises(MiddlewareNotUsed):
        make(Handler())
    with pytest.raises(MiddlewareNotUsed):
        make(Handler(), abort_fraction=1.0, methods=("cache.CacheService/Store",))
    assert make(Handler(), abort_fraction=1.0, methods=(f"/{METHOD}",))
    assert make(Handler(), allow_metadata=True)


def test_aborts_say_the_fault_was_injected_and_log_once():
    handler = Handler()
    mw = make(handler, abort_fraction=1.0, abort_code="NOT_FOUND")
    with capture_logs() as logs, pytest.raises(RpcStatusError) as info:
        mw(call_of())
    assert info.value.code() is NOT_FOUND
    assert "fault injected" in info.value.details() and METHOD in info.value.details()
    assert info.value.retryable
    assert handler.calls == 0
    assert logs == [{"event": "fault_injected", "log_level": "info", "side": "client",
                     "method": METHOD, "fault": "abort", "code": "NOT_FOUND",
                     "delay_ms": 0.0, "source": "random"}]


def test_a_seeded_middleware_aborts_the_calls_its_seed_says():
    n = 200
    mw = make(Handler(), abort_fraction=0.3, seed=5)
    expected = FaultDecider(rng=random.Random(5), abort_fraction=0.3)
    for _ in range(n):
        aborted = expected.decide() is not None
        try:
            mw(call_of())
        except RpcStatusError:
            assert aborted
        else:
            assert not aborted


def test_delays_then_calls_on():
    handler = Handler()
    mw = make(handler, delay_fraction=1.0, delay_seconds=0.05)
    start = time.monotonic()
    assert mw(call_of(deadline=time.monotonic() + 5)) == "ok"
    assert time.monotonic() - start >= 0.05
    assert handler.calls == 1


def test_a_delay_never_sleeps_past_the_deadline():
    handler = Handler()
    mw = make(handler, delay_fraction=1.0, delay_seconds=5.0)
    start = time.monotonic()
    with pytest.raises(RpcStatusError) as info:
        mw(call_of(deadline=start + 0.1))
    elapsed = time.monotonic() - start
    assert 0.09 <= elapsed < 1.0
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "5000 ms delay" in info.value.details()
    assert handler.calls == 0


class FakeContext:
    """A sync server context whose RPC ends when the test says."""

    def __init__(self) -> None:
        self.callbacks: list[Any] = []

    def add_callback(self, callback: Any) -> bool:
        self.callbacks.append(callback)
        return True

    def terminate(self) -> None:
        for callback in self.callbacks:
            callback()


def test_a_server_delay_ends_when_the_rpc_does():
    context = FakeContext()
    mw = make(Handler(), side="server", delay_fraction=1.0, delay_seconds=10.0)
    threading.Timer(0.05, context.terminate).start()
    start = time.monotonic()
    with pytest.raises(RpcStatusError) as info:
        mw(call_of(side="server", context=context))
    assert time.monotonic() - start < 5
    assert info.value.code() is grpc.StatusCode.CANCELLED


def test_metadata_is_obeyed_only_when_allowed():
    handler = Handler()
    asked = (("x-fault-abort", "NOT_FOUND"),)
    assert make(handler, delay_fraction=1.0, delay_seconds=0.001)(call_of(metadata=asked)) == "ok"
    mw = make(handler, allow_metadata=True, abort_header="x-chaos")
    assert mw(call_of(metadata=asked)) == "ok"
    with capture_logs() as logs, pytest.raises(RpcStatusError) as info:
        mw(call_of(metadata=(("x-chaos", "14"),)))
    assert info.value.code() is UNAVAILABLE
    assert [(line["fault"], line["source"]) for line in logs] == [("abort", "metadata")]


def test_bad_metadata_is_ignored_with_a_warning():
    mw = make(Handler(), allow_metadata=True)
    with capture_logs() as logs:
        assert mw(call_of(metadata=(("x-fault-abort", "OK"), ("x-fault-delay-ms", "soon")))) == "ok"
    assert [line["event"] for line in logs] == ["fault_metadata_ignored"] * 2
    assert all(line["log_level"] == "warning" for line in logs)


def test_sync_streams_are_faulted_before_they_start():
    started = []

    def stream(call: Call) -> Any:
        started.append(call)
        return iter([1, 2])

    with pytest.raises(RpcStatusError):
        make(stream, STREAM, abort_fraction=1.0)(call_of(STREAM))
    assert started == []


# The middleware, asyncio path


class AsyncHandler:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, call: Call) -> Any:
        self.calls += 1
        return "ok"


def test_async_calls_without_a_fault_get_the_layer_below_untouched():
    sentinel = object()
    mw = make(lambda call: sentinel, is_async=True, abort_fraction=0.5, seed=1)
    results = [mw.acall(call_of()) for _ in range(20)]
    assert sentinel in results
    for result in results:
        if result is not sentinel:
            result.close()  # a faulted coroutine, never awaited here


def test_async_abort_is_raised_when_awaited():
    handler = AsyncHandler()
    mw = make(handler, is_async=True, abort_fraction=1.0)
    pending = mw.acall(call_of())
    with pytest.raises(RpcStatusError) as info:
        asyncio.run(pending)
    assert info.value.code() is UNAVAILABLE
    assert handler.calls == 0


def test_async_delay_is_bounded_by_the_deadline():
    handler = AsyncHandler()
    mw = make(handler, is_async=True, delay_fraction=1.0, delay_seconds=5.0)

    async def main() -> float:
        start = time.monotonic()
        with pytest.raises(RpcStatusError) as info:
            await mw.acall(call_of(deadline=start + 0.1))
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        return time.monotonic() - start

    assert 0.09 <= asyncio.run(main()) < 1.0
    assert handler.calls == 0


def test_async_delay_is_cancellable():
    handler = AsyncHandler()
    mw = make(handler, is_async=True, delay_fraction=1.0, delay_seconds=10.0)

    async def main() -> None:
        task = asyncio.create_task(mw.acall(call_of()))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    start = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - start < 5
    assert handler.calls == 0


def test_async_streams_are_delayed_before_they_start():
    started: list[float] = []

    async def items() -> AsyncIterator[int]:
        for item in (1, 2, 3):
            yield item

    def stream(call: Call) -> AsyncIterator[int]:
        started.append(time.monotonic())
        return items()

    mw = make(stream, STREAM, is_async=True, delay_fraction=1.0, delay_seconds=0.05)

    async def main() -> list[int]:
        responses = mw.acall(call_of(STREAM))
        assert started == []
        return [item async for item in responses]

    start = time.monotonic()
    assert asyncio.run(main()) == [1, 2, 3]
    assert started[0] - start >= 0.05
