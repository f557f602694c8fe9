"""The asyncio paths of the built-in middleware, against fake async handlers.

Each test drives a coroutine with ``asyncio.run``; there is no network. The sync paths
are covered by the ``test_*_unit.py`` file of each middleware.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from resilience.core.call import Call, CallKind
from resilience.core.errors import RpcStatusError
from resilience.core.middleware import ChainInfo, Middleware
from resilience.middleware import CircuitBreaker, ConcurrencyLimit, RequestLogging, Retry, Timeout

METHOD = "cache.CacheService/Get"
UNARY = CallKind.UNARY_UNARY
STREAM = CallKind.UNARY_STREAM
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def make(cls: type[Middleware], handler: Any, kind: CallKind = UNARY, side: str = "client",
         shared: dict[str, Any] | None = None, **options: Any) -> Any:
    info = ChainInfo(METHOD, kind, side, cls.__name__, {} if shared is None else shared,
                     "cache:50051", is_async=True, idempotent=True)
    return cls(handler, cls.Options(**options), info)


def make_call(kind: CallKind = UNARY, side: str = "client", deadline: float | None = None,
              context: Any = None) -> Call:
    return Call(METHOD, kind, side, "req", deadline=deadline, context=context)


async def collect(responses: AsyncIterator[Any]) -> list[Any]:
    return [response async for response in responses]


async def wait_until(condition: Callable[[], bool]) -> None:
    """Let other tasks run until ``condition`` holds; fail rather than hang."""
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0)


class Script:
    """An async terminal that raises the given errors in turn, then returns ``result``."""

    def __init__(self, *errors: BaseException, result: Any = "ok") -> None:
        self.errors = list(errors)
        self.result = result
        self.attempts: list[int] = []

    async def __call__(self, call: Call) -> Any:
        self.attempts.append(call.attempt)
        await asyncio.sleep(0)
        if self.errors:
            raise self.errors.pop(0)
        return self.result


class Stream:
    """An async streaming terminal: per attempt, a list of items and an optional error."""

    def __init__(self, *scripts: tuple[list[Any], BaseException | None]) -> None:
        self.scripts = list(scripts)
        self.attempts: list[int] = []

    def __call__(self, call: Call) -> AsyncIterator[Any]:
        self.attempts.append(call.attempt)
        items, error = self.scripts.pop(0)

        async def responses() -> AsyncIterator[Any]:
            for item in items:
                await asyncio.sleep(0)
                yield item
            if error is not None:
                raise error

        return responses()


class Clock:
    """A fake monotonic clock whose async sleep records the wait and moves time on."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def asleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make_retry(handler: Any, kind: CallKind = UNARY, **options: Any) -> tuple[Retry, Clock]:
    retry = make(Retry, handler, kind, **options)
    clock = Clock()
    retry.clock = clock
    retry.asleep = clock.asleep
    retry.rng = random.Random(7)
    return retry, clock


def unavailable(count: int) -> list[RpcStatusError]:
    return [RpcStatusError(UNAVAILABLE, f"down {i}") for i in range(count)]


# Retry


def test_retry_awaits_backoff_between_numbered_attempts():
    handler = Script(*unavailable(3))
    retry, clock = make_retry(handler, max_attempts=4, initial_backoff=0.01, jitter="none")
    assert asyncio.run(retry.acall(make_call())) == "ok"
    assert handler.attempts == [1, 2, 3, 4]
    assert clock.sleeps == pytest.approx([0.01, 0.02, 0.04])
    assert retry.retries == 3


def test_retry_gives_up_after_max_attempts_without_a_final_sleep():
    errors = unavailable(5)
    handler = Script(*errors)
    retry, clock = make_retry(handler, max_attempts=3)
    with pytest.raises(RpcStatusError) as info:
        asyncio.run(retry.acall(make_call()))
    assert info.value is errors[2]
    assert handler.attempts == [1, 2, 3]
    assert len(clock.sleeps) == 2


def test_retry_never_sleeps_past_the_deadline():
    errors = unavailable(5)
    handler = Script(*errors)
    retry, clock = make_retry(handler, max_attempts=5, initial_backoff=0.2, jitter="none")
    with pytest.raises(RpcStatusError) as info:
        asyncio.run(retry.acall(make_call(deadline=clock.now + 0.3)))
    assert clock.sleeps == [0.2]
    assert handler.attempts == [1, 2]
    assert info.value is errors[1]


@pytest.mark.parametrize(
    "error",
    [
        RpcStatusError(grpc.StatusCode.NOT_FOUND),
        RpcStatusError(UNAVAILABLE, "circuit open", retryable=False),
    ],
)
def test_retry_leaves_other_codes_and_local_rejections_alone(error):
    handler = Script(error)
    retry, clock = make_retry(handler)
    with pytest.raises(RpcStatusError) as info:
        asyncio.run(retry.acall(make_call()))
    assert info.value is error
    assert handler.attempts == [1]
    assert clock.sleeps == []


def test_retry_logs_each_retry():
    retry, _ = make_retry(Script(*unavailable(1)), jitter="none", initial_backoff=0.05)
    with capture_logs() as logs:
        asyncio.run(retry.acall(make_call()))
    assert [(line["event"], line["attempt"], line["backoff_ms"]) for line in logs] == [
        ("retrying", 1, 50.0)
    ]


def test_retry_backoff_is_cancellable():
    handler = Script(*unavailable(2))
    retry = make(Retry, handler, initial_backoff=10.0, max_backoff=10.0, jitter="none")

    async def main() -> None:
        task = asyncio.create_task(retry.acall(make_call()))
        await wait_until(lambda: retry.retries == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert handler.attempts == [1]


def test_retry_stream_retried_only_before_the_first_item():
    handler = Stream(([], RpcStatusError(UNAVAILABLE)), ([1, 2, 3], None))
    retry, clock = make_retry(handler, STREAM)
    assert asyncio.run(collect(retry.acall(make_call(STREAM)))) == [1, 2, 3]
    assert handler.attempts == [1, 2]
    assert len(clock.sleeps) == 1

    error = RpcStatusError(UNAVAILABLE)
    handler = Stream(([1, 2], error), ([1, 2, 3], None))
    retry, clock = make_retry(handler, STREAM)
    received: list[Any] = []

    async def read() -> None:
        async for item in retry.acall(make_call(STREAM)):
            received.append(item)

    with pytest.raises(RpcStatusError) as info:
        asyncio.run(read())
    assert info.value is error
    assert received == [1, 2]
    assert handler.attempts == [1]
    assert clock.sleeps == []


def test_retry_stream_empty_ends_cleanly():
    retry, _ = make_retry(Stream(([], None)), STREAM)
    assert asyncio.run(collect(retry.acall(make_call(STREAM)))) == []


class AioStreamCall:
    """Like grpc.aio's UnaryStreamCall: async-iterable (no ``__anext__``) and cancellable."""

    def __init__(self) -> None:
        self.cancelled = False

    async def _responses(self) -> AsyncIterator[int]:
        while True:
            await asyncio.sleep(0)
            yield 1

    def __aiter__(self) -> AsyncIterator[int]:
        return self._responses()

    def cancel(self) -> bool:
        self.cancelled = True
        return True


def test_retry_stream_closed_early_cancels_the_rpc():
    rpc = AioStreamCall()
    retry, _ = make_retry(lambda call: rpc, STREAM)

    async def main() -> None:
        stream = retry.acall(make_call(STREAM))
        assert await anext(stream) == 1
        await stream.aclose()

    asyncio.run(main())
    assert rpc.cancelled


def test_retry_passes_request_streams_through():
    handler = Script()
    retry, _ = make_retry(handler, CallKind.STREAM_UNARY)
    assert retry.acall == handler


# Timeout


def test_timeout_tightens_the_deadline_for_the_awaited_call():
    seen: list[Call] = []

    async def handler(call: Call) -> str:
        seen.append(call)
        return "ok"

    timeout = make(Timeout, handler, seconds=0.5)
    before = time.monotonic()
    assert asyncio.run(timeout.acall(make_call())) == "ok"
    assert before + 0.5 <= seen[0].deadline <= time.monotonic() + 0.5

    caller = make_call(deadline=time.monotonic() + 0.1)
    asyncio.run(make(Timeout, handler, seconds=5.0).acall(caller))
    assert seen[1] is caller


def test_timeout_passes_a_response_stream_on_unchanged():
    stream = Stream(([1, 2], None))
    timeout = make(Timeout, stream, STREAM, seconds=1.0)
    assert asyncio.run(collect(timeout.acall(make_call(STREAM)))) == [1, 2]


# CircuitBreaker


async def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        with pytest.raises(grpc.RpcError):
            await breaker.acall(make_call())


class Backend:
    """An async handler that fails with ``code`` (or succeeds when it is None)."""

    def __init__(self, code: grpc.StatusCode | None = None) -> None:
        self.code = code
        self.calls = 0

    async def __call__(self, call: Call) -> str:
        self.calls += 1
        await asyncio.sleep(0)
        if self.code is not None:
            raise RpcStatusError(self.code, "boom")
        return "resp"


def fallback(request: Any, error: BaseException) -> tuple[str, Any, grpc.StatusCode]:
    return ("fallback", request, error.code())


async def async_fallback(request: Any, error: BaseException) -> tuple[str, Any, grpc.StatusCode]:
    await asyncio.sleep(0)
    return ("async fallback", request, error.code())


def stream_fallback(request: Any, error: BaseException) -> list[str]:
    return ["sync", "fallback"]


async def async_stream_fallback(request: Any, error: BaseException) -> AsyncIterator[str]:
    yield "async"
    yield "fallback"


def test_breaker_opens_after_fail_max_awaited_failures_and_fails_fast():
    backend = Backend(UNAVAILABLE)
    breaker = make(CircuitBreaker, backend, fail_max=3)
    asyncio.run(fail(breaker, 3))
    assert breaker.state == "open"
    with pytest.raises(RpcStatusError) as info:
        asyncio.run(breaker.acall(make_call()))
    assert info.value.code() == UNAVAILABLE
    assert "is open" in info.value.details()
    assert info.value.retryable is False
    assert backend.calls == 3


def test_breaker_not_found_storm_does_not_open_it():
    backend = Backend(grpc.StatusCode.NOT_FOUND)
    breaker = make(CircuitBreaker, backend, fail_max=2)
    asyncio.run(fail(breaker, 50))
    assert breaker.state == "closed"
    assert backend.calls == 50


def test_breaker_successful_trial_closes_it():
    backend = Backend(UNAVAILABLE)
    breaker = make(CircuitBreaker, backend, fail_max=1, reset_timeout=0.05)

    async def main() -> None:
        await fail(breaker, 1)
        await asyncio.sleep(0.1)
        backend.code = None
        assert await breaker.acall(make_call()) == "resp"

    asyncio.run(main())
    assert breaker.state == "closed"


def test_breaker_cancelled_call_counts_as_neither():
    entered = asyncio.Event()

    async def hang(call: Call) -> None:
        entered.set()
        await asyncio.Event().wait()

    breaker = make(CircuitBreaker, hang, fail_max=2)
    breaker.breaker._state_storage.increment_counter()

    async def main() -> None:
        task = asyncio.create_task(breaker.acall(make_call()))
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert breaker.breaker.fail_counter == 1
    assert breaker.state == "closed"


def test_breaker_cancelled_trial_frees_the_trial_slot():
    backend = Backend(UNAVAILABLE)
    breaker = make(CircuitBreaker, backend, fail_max=1, reset_timeout=0.05)

    async def hang(call: Call) -> None:
        await asyncio.Event().wait()

    async def main() -> None:
        await fail(breaker, 1)
        await asyncio.sleep(0.1)
        breaker.handler = hang
        trial = asyncio.create_task(breaker.acall(make_call()))
        await wait_until(lambda: breaker.state == "half-open")
        trial.cancel()
        with pytest.raises(asyncio.CancelledError):
            await trial
        breaker.handler = Backend()
        assert await breaker.acall(make_call()) == "resp"

    asyncio.run(main())
    assert breaker.state == "closed"


def test_breaker_concurrent_awaited_calls_overlap():
    callers = 16
    inside = 0
    all_inside = asyncio.Event()

    async def gate(call: Call) -> str:
        nonlocal inside
        inside += 1
        if inside == callers:
            all_inside.set()
        await all_inside.wait()  # returns only once every caller is in here at once
        return "resp"

    breaker = make(CircuitBreaker, gate)

    async def main() -> list[str]:
        async with asyncio.timeout(5):
            return await asyncio.gather(*(breaker.acall(make_call()) for _ in range(callers)))

    assert asyncio.run(main()) == ["resp"] * callers
    assert breaker.state == "closed"


@pytest.mark.parametrize(
    ("path", "label"), [("fallback", "fallback"), ("async_fallback", "async fallback")]
)
def test_breaker_fallback_sync_or_async(path, label):
    backend = Backend(UNAVAILABLE)
    breaker = make(CircuitBreaker, backend, fail_max=1, fallback=f"{__name__}.{path}")
    assert asyncio.run(breaker.acall(make_call())) == (label, "req", UNAVAILABLE)
    assert breaker.state == "open"
    assert asyncio.run(breaker.acall(make_call())) == (label, "req", UNAVAILABLE)
    assert backend.calls == 1


def test_breaker_fallback_not_used_for_caller_errors():
    breaker = make(CircuitBreaker, Backend(grpc.StatusCode.NOT_FOUND),
                   fallback=f"{__name__}.async_fallback")
    with pytest.raises(RpcStatusError):
        asyncio.run(breaker.acall(make_call()))


def test_breaker_stream_outcome_recorded_when_it_ends():
    handler = Stream((["first"], RpcStatusError(UNAVAILABLE, "cut")), ([], None))
    breaker = make(CircuitBreaker, handler, STREAM, fail_max=1)

    async def main() -> None:
        stream = breaker.acall(make_call(STREAM))
        assert breaker.state == "closed"
        assert await anext(stream) == "first"
        with pytest.raises(RpcStatusError):
            await anext(stream)
        assert breaker.state == "open"
        with pytest.raises(RpcStatusError) as info:
            await collect(breaker.acall(make_call(STREAM)))
        assert "is open" in info.value.details()

    asyncio.run(main())
    assert handler.attempts == [1]


@pytest.mark.parametrize(
    ("path", "items"),
    [("stream_fallback", ["sync", "fallback"]), ("async_stream_fallback", ["async", "fallback"])],
)
def test_breaker_stream_fallback_sync_or_async_iterable(path, items):
    handler = Stream(([], RpcStatusError(UNAVAILABLE)))
    breaker = make(CircuitBreaker, handler, STREAM, fail_max=1, fallback=f"{__name__}.{path}")
    assert asyncio.run(collect(breaker.acall(make_call(STREAM)))) == items  # on failure
    assert asyncio.run(collect(breaker.acall(make_call(STREAM)))) == items  # while open


def test_breaker_stream_closed_early_counts_as_neither():
    breaker = make(CircuitBreaker, Stream((["first", "second"], None)), STREAM, fail_max=1)
    breaker.breaker._state_storage.increment_counter()

    async def main() -> None:
        stream = breaker.acall(make_call(STREAM))
        await anext(stream)
        await stream.aclose()

    asyncio.run(main())
    assert breaker.breaker.fail_counter == 1
    assert breaker.state == "closed"


# ConcurrencyLimit


class AioContext:
    """The part of grpc.aio.ServicerContext that ConcurrencyLimit uses."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[Any], None]] = []

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self.callbacks.append(callback)

    def done(self) -> None:
        for callback in self.callbacks:
            callback(self)


def gated(gate: asyncio.Event) -> Callable[[Call], Awaitable[str]]:
    async def handler(call: Call) -> str:
        await gate.wait()
        return "ok"

    return handler


def test_limit_rejects_the_call_beyond_the_limit_at_once():
    async def main() -> ConcurrencyLimit:
        gate = asyncio.Event()
        limit = make(ConcurrencyLimit, gated(gate), side="server", max_in_flight=3)
        held = [asyncio.create_task(limit.acall(make_call())) for _ in range(3)]
        await wait_until(lambda: limit.in_flight == 3)
        with pytest.raises(RpcStatusError) as info:
            await limit.acall(make_call())
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "3 calls in flight" in info.value.details()
        gate.set()
        assert await asyncio.gather(*held) == ["ok"] * 3
        return limit

    assert asyncio.run(main()).in_flight == 0


def test_limit_released_after_error_and_after_cancellation():
    async def main() -> ConcurrencyLimit:
        limit = make(ConcurrencyLimit, Backend(grpc.StatusCode.INTERNAL), max_in_flight=1)
        with pytest.raises(RpcStatusError):
            await limit.acall(make_call())
        assert limit.in_flight == 0
        limit.handler = gated(asyncio.Event())
        task = asyncio.create_task(limit.acall(make_call()))
        await wait_until(lambda: limit.in_flight == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return limit

    assert asyncio.run(main()).in_flight == 0


def test_limit_stream_holds_its_slot_until_exhausted_or_failed():
    async def main() -> None:
        limit = make(ConcurrencyLimit, Stream(([0, 1, 2], None)), STREAM, max_in_flight=1)
        responses = limit.acall(make_call(STREAM))
        assert limit.in_flight == 1
        assert await collect(responses) == [0, 1, 2]
        assert limit.in_flight == 0
        limit.handler = Stream(([1], RpcStatusError(grpc.StatusCode.INTERNAL)))
        with pytest.raises(RpcStatusError):
            await collect(limit.acall(make_call(STREAM)))
        assert limit.in_flight == 0

    asyncio.run(main())


def test_limit_stream_closed_early_releases_once():
    async def main() -> None:
        limit = make(ConcurrencyLimit, Stream(([0, 1, 2], None)), STREAM, side="server",
                     max_in_flight=2)
        context = AioContext()
        responses = limit.acall(make_call(STREAM, "server", context=context))
        assert await anext(responses) == 0
        await responses.aclose()
        assert limit.in_flight == 0
        context.done()  # grpc's done callback must not release again
        assert limit.in_flight == 0

    asyncio.run(main())


def test_limit_stream_abandoned_on_the_server_is_released_when_the_rpc_ends():
    async def main() -> None:
        limit = make(ConcurrencyLimit, Stream(([0], None)), STREAM, side="server",
                     max_in_flight=1)
        context = AioContext()
        responses = limit.acall(make_call(STREAM, "server", context=context))
        context.done()
        assert limit.in_flight == 0
        assert await collect(responses) == [0]
        assert limit.in_flight == 0

    asyncio.run(main())


def test_limit_stream_cancelled_reader_releases():
    async def main() -> None:
        async def hang(call: Call) -> AsyncIterator[int]:
            await asyncio.Event().wait()
            yield 1

        limit = make(ConcurrencyLimit, hang, STREAM, max_in_flight=1)
        task = asyncio.create_task(collect(limit.acall(make_call(STREAM))))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert limit.in_flight == 0

    asyncio.run(main())


def test_limit_unstarted_stream_dropped_is_released():
    limit = make(ConcurrencyLimit, Stream(([0], None)), STREAM, max_in_flight=1)
    responses = limit.acall(make_call(STREAM))
    assert limit.in_flight == 1
    del responses
    gc.collect()
    assert limit.in_flight == 0


def test_limit_client_context_is_not_a_servicer_context():
    """On a client, ``call.context`` carries call options and has no done callbacks."""
    limit = make(ConcurrencyLimit, Stream(([0], None)), STREAM, side="client")
    assert asyncio.run(collect(limit.acall(make_call(STREAM, context=object())))) == [0]
    assert limit.in_flight == 0


# RequestLogging


class AioServicerContext:
    """A grpc.aio servicer context, which must not be read once its call is over."""

    def __init__(self) -> None:
        self.over = False

    def peer(self) -> str:
        assert not self.over, "peer() read after the call ended"
        return "ipv4:127.0.0.1:4242"


def test_logging_one_line_with_the_code():
    mw = make(RequestLogging, Script())
    with capture_logs() as logs:
        assert asyncio.run(mw.acall(make_call())) == "ok"
    assert len(logs) == 1
    assert logs[0]["event"] == "rpc"
    assert logs[0]["code"] == "OK"
    assert logs[0]["log_level"] == "info"
    assert logs[0]["peer"] == "cache:50051"

    mw = make(RequestLogging, Script(RpcStatusError(UNAVAILABLE)))
    with capture_logs() as logs, pytest.raises(RpcStatusError):
        asyncio.run(mw.acall(make_call()))
    assert [(line["code"], line["log_level"]) for line in logs] == [("UNAVAILABLE", "warning")]


def test_logging_server_reads_the_peer_when_the_call_starts():
    context = AioServicerContext()

    async def ends_the_call(call: Call) -> str:
        call.context.over = True
        return "ok"

    async def main() -> None:
        mw = make(RequestLogging, ends_the_call, side="server")
        assert await mw.acall(make_call(side="server", context=context)) == "ok"
        streaming = make(RequestLogging, Stream(([0, 1], None)), STREAM, side="server")
        context.over = False
        responses = streaming.acall(make_call(STREAM, side="server", context=context))
        await anext(responses)
        context.over = True
        await responses.aclose()

    with capture_logs() as logs:
        asyncio.run(main())
    assert [(line["code"], line["peer"]) for line in logs] == [
        ("OK", "ipv4:127.0.0.1:4242"), ("CANCELLED", "ipv4:127.0.0.1:4242")
    ]


def test_logging_server_handler_cancelled_after_its_deadline():
    mw = make(RequestLogging, Script(asyncio.CancelledError()), side="server")
    call = make_call(side="server", deadline=time.monotonic() - 1, context=AioServicerContext())
    with capture_logs() as logs, pytest.raises(asyncio.CancelledError):
        asyncio.run(mw.acall(call))
    assert [line["code"] for line in logs] == ["DEADLINE_EXCEEDED"]


def test_logging_stream_logged_once_when_it_ends_or_is_closed():
    async def main() -> None:
        mw = make(RequestLogging, Stream(([0, 1, 2], None), ([0, 1], None)), STREAM)
        responses = mw.acall(make_call(STREAM))
        assert await collect(responses) == [0, 1, 2]
        responses = mw.acall(make_call(STREAM))
        await anext(responses)
        await responses.aclose()

    with capture_logs() as logs:
        asyncio.run(main())
    assert [line["code"] for line in logs] == ["OK", "CANCELLED"]


@pytest.mark.parametrize("cls", [CircuitBreaker, ConcurrencyLimit, RequestLogging, Retry, Timeout])
def test_every_builtin_runs_in_both_modes(cls):
    assert cls.sync_capable and cls.async_capable
