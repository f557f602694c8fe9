import random
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import structlog.testing

from resilience.core.call import Call, CallKind
from resilience.core.errors import RpcStatusError
from resilience.core.middleware import ChainInfo
from resilience.core.options import build_options
from resilience.middleware.retry import Retry

METHOD = "cache.CacheService/Get"
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class Clock:
    """A fake monotonic clock whose sleep records the wait and moves time on."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Script:
    """A terminal handler that raises the given errors in turn, then returns ``result``."""

    def __init__(self, *errors: grpc.RpcError, result: Any = "ok") -> None:
        self.errors = list(errors)
        self.result = result
        self.attempts: list[int] = []

    def __call__(self, call: Call) -> Any:
        self.attempts.append(call.attempt)
        if self.errors:
            raise self.errors.pop(0)
        return self.result


def make(
    handler: Any, kind: CallKind = CallKind.UNARY_UNARY, **options: Any
) -> tuple[Retry, Clock]:
    info = ChainInfo(method=METHOD, kind=kind, side="client", name="Retry", shared={},
                     idempotent=True)
    retry = Retry(handler, Retry.Options(**options), info)
    clock = Clock()
    retry.clock = clock
    retry.sleep = clock.sleep
    retry.rng = random.Random(7)
    return retry, clock


def call(kind: CallKind = CallKind.UNARY_UNARY, deadline: float | None = None) -> Call:
    return Call(METHOD, kind, "client", b"key", deadline=deadline)


def unavailable(count: int) -> list[RpcStatusError]:
    return [RpcStatusError(UNAVAILABLE, f"down {i}") for i in range(count)]


def test_succeeds_first_time_without_sleeping():
    handler = Script()
    retry, clock = make(handler)
    assert retry(call()) == "ok"
    assert handler.attempts == [1]
    assert clock.sleeps == []


def test_retries_unavailable_with_numbered_attempts():
    handler = Script(*unavailable(3))
    retry, clock = make(handler, max_attempts=4, jitter="none")
    assert retry(call()) == "ok"
    assert handler.attempts == [1, 2, 3, 4]
    assert len(clock.sleeps) == 3


def test_gives_up_after_max_attempts_without_a_final_sleep():
    errors = unavailable(5)
    handler = Script(*errors)
    retry, clock = make(handler, max_attempts=3, jitter="none")
    with pytest.raises(RpcStatusError) as info:
        retry(call())
    assert info.value is errors[2]
    assert handler.attempts == [1, 2, 3]
    assert len(clock.sleeps) == 2


def test_exponential_sleeps_grow_without_jitter():
    handler = Script(*unavailable(4))
    retry, clock = make(
        handler, max_attempts=5, initial_backoff=0.01, max_backoff=10.0, jitter="none"
    )
    retry(call())
    assert clock.sleeps == pytest.approx([0.01, 0.02, 0.04, 0.08])


def test_full_jitter_sleeps_stay_within_their_caps():
    handler = Script(*unavailable(6))
    retry, clock = make(
        handler, max_attempts=7, initial_backoff=0.01, max_backoff=0.1, budget=False
    )
    retry(call())
    caps = [0.01, 0.02, 0.04, 0.08, 0.1, 0.1]
    assert len(clock.sleeps) == len(caps)
    for slept, cap in zip(clock.sleeps, caps, strict=True):
        assert 0.0 <= slept <= cap


@pytest.mark.parametrize("code", [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT])
def test_does_not_retry_other_codes_by_default(code):
    error = RpcStatusError(code)
    handler = Script(error)
    retry, clock = make(handler)
    with pytest.raises(RpcStatusError) as info:
        retry(call())
    assert info.value is error
    assert handler.attempts == [1]
    assert clock.sleeps == []


def test_retries_configured_codes():
    handler = Script(RpcStatusError(grpc.StatusCode.RESOURCE_EXHAUSTED))
    retry, _ = make(handler, retryable_codes=frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED}))
    assert retry(call()) == "ok"
    assert handler.attempts == [1, 2]


def test_empty_retryable_codes_never_retries():
    handler = Script(*unavailable(1))
    retry, _ = make(handler, retryable_codes=frozenset())
    with pytest.raises(RpcStatusError):
        retry(call())
    assert handler.attempts == [1]


def test_local_rejections_are_not_retried():
    error = RpcStatusError(UNAVAILABLE, "circuit open", retryable=False)
    handler = Script(error)
    retry, clock = make(handler)
    with pytest.raises(RpcStatusError) as info:
        retry(call())
    assert info.value is error
    assert handler.attempts == [1]
    assert clock.sleeps == []


def test_other_exceptions_are_not_retried():
    def handler(call: Call) -> None:
        raise KeyError("bug")

    retry, clock = make(handler)
    with pytest.raises(KeyError):
        retry(call())
    assert clock.sleeps == []


def test_stops_instead_of_sleeping_past_the_deadline():
    errors = unavailable(5)
    handler = Script(*errors)
    retry, clock = make(
        handler, max_attempts=5, initial_backoff=0.2, max_backoff=1.0, jitter="none"
    )
    with pytest.raises(RpcStatusError) as info:
        retry(call(deadline=clock.now + 0.3))
    assert sum(clock.sleeps) < 0.3
    assert clock.sleeps == [0.2]
    assert handler.attempts == [1, 2]
    assert info.value is errors[1]


def test_no_sleep_at_all_when_the_first_backoff_does_not_fit():
    handler = Script(*unavailable(2))
    retry, clock = make(handler, initial_backoff=0.5, jitter="none")
    with pytest.raises(RpcStatusError):
        retry(call(deadline=clock.now + 0.3))
    assert clock.sleeps == []
    assert handler.attempts == [1]


def test_logs_each_retry():
    handler = Script(*unavailable(1))
    retry, _ = make(handler, jitter="none", initial_backoff=0.05)
    with structlog.testing.capture_logs() as logs:
        retry(call())
    assert logs == [
        {
            "event": "retrying",
            "log_level": "warning",
            "method": METHOD,
            "attempt": 1,
            "code": "UNAVAILABLE",
            "backoff_ms": 50.0,
        }
    ]


class Stream:
    """A streaming terminal handler: per attempt, a list of items and an optional error."""

    def __init__(self, *scripts: tuple[list[Any], grpc.RpcError | None]) -> None:
        self.scripts = list(scripts)
        self.attempts: list[int] = []

    def __call__(self, call: Call) -> Iterator[Any]:
        self.attempts.append(call.attempt)
        items, error = self.scripts.pop(0)

        def responses() -> Iterator[Any]:
            yield from items
            if error is not None:
                raise error

        return responses()


def test_stream_error_before_first_item_is_retried():
    handler = Stream(([], RpcStatusError(UNAVAILABLE)), ([1, 2, 3], None))
    retry, clock = make(handler, CallKind.UNARY_STREAM)
    assert list(retry(call(CallKind.UNARY_STREAM))) == [1, 2, 3]
    assert handler.attempts == [1, 2]
    assert len(clock.sleeps) == 1


def test_stream_error_after_first_item_is_not_retried():
    error = RpcStatusError(UNAVAILABLE)
    handler = Stream(([1, 2], error), ([1, 2, 3], None))
    retry, clock = make(handler, CallKind.UNARY_STREAM)
    received = []
    with pytest.raises(RpcStatusError) as info:
        for item in retry(call(CallKind.UNARY_STREAM)):
            received.append(item)
    assert info.value is error
    assert received == [1, 2]
    assert handler.attempts == [1]
    assert clock.sleeps == []


def test_stream_gives_up_after_max_attempts():
    handler = Stream(*[([], RpcStatusError(UNAVAILABLE)) for _ in range(3)])
    retry, clock = make(handler, CallKind.UNARY_STREAM, max_attempts=3)
    with pytest.raises(RpcStatusError):
        list(retry(call(CallKind.UNARY_STREAM)))
    assert handler.attempts == [1, 2, 3]
    assert len(clock.sleeps) == 2


def test_empty_stream_ends_cleanly():
    handler = Stream(([], None))
    retry, _ = make(handler, CallKind.UNARY_STREAM)
    assert list(retry(call(CallKind.UNARY_STREAM))) == []


def test_closing_a_stream_early_cancels_it():
    class Cancellable:
        cancelled = False

        def __iter__(self) -> "Cancellable":
            return self

        def __next__(self) -> int:
            return 1

        def cancel(self) -> None:
            self.cancelled = True

    responses = Cancellable()
    retry, _ = make(lambda call: responses, CallKind.UNARY_STREAM)
    stream = retry(call(CallKind.UNARY_STREAM))
    assert next(stream) == 1
    stream.close()
    assert responses.cancelled


@pytest.mark.parametrize("kind", [CallKind.STREAM_UNARY, CallKind.STREAM_STREAM])
def test_request_streams_pass_straight_through(kind):
    handler = Script(*unavailable(1))
    retry, clock = make(handler, kind)
    with pytest.raises(RpcStatusError):
        retry(call(kind))
    assert handler.attempts == [1]
    assert clock.sleeps == []


def test_options_validate_backoff_bounds():
    options, problems = build_options(Retry.Options, {"initial_backoff": 0.5, "max_backoff": 0.1})
    assert options is None
    assert problems == ["max_backoff 0.1 is below initial_backoff 0.5; raise max_backoff"]


def test_options_from_settings_values():
    options, problems = build_options(
        Retry.Options, {"MAX_ATTEMPTS": 5, "retryable_codes": ["unavailable", "ABORTED"]}
    )
    assert problems == []
    assert options.max_attempts == 5
    assert options.retryable_codes == frozenset({UNAVAILABLE, grpc.StatusCode.ABORTED})
