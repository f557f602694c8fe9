"""resilience.testing: what a user needs to test a middleware of their own, shown on ours."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from resilience.core.call import CallKind
from resilience.core.errors import ImproperlyConfigured, MiddlewareNotUsed, RpcStatusError
from resilience.middleware import CircuitBreaker, Retry, Timeout
from resilience.testing import FakeClock, FakeHandler, build, call_for, chain_info

UNAVAILABLE = RpcStatusError(grpc.StatusCode.UNAVAILABLE, "down")


def test_a_fake_handler_answers_in_turn_and_records_every_call() -> None:
    handler = FakeHandler(UNAVAILABLE, result="ok")
    retry = build(Retry, handler, options={"initial_backoff": 0.01, "max_backoff": 0.01})
    clock = FakeClock()
    retry.sleep = clock.sleep  # type: ignore[attr-defined]
    assert retry(call_for("req")) == "ok"
    assert [call.attempt for call in handler.calls] == [1, 2]
    assert len(clock.sleeps) == 1 and 0 <= clock.sleeps[0] <= 0.01


def test_build_validates_options_as_the_loader_does() -> None:
    with pytest.raises(ImproperlyConfigured, match="max_attemps"):
        build(Retry, FakeHandler(), options={"max_attemps": 3})
    with pytest.raises(ImproperlyConfigured, match="max_attempts"):
        build(Retry, FakeHandler(), options={"max_attempts": 0})


def test_build_leaves_a_middleware_out_as_the_chain_would() -> None:
    with pytest.raises(MiddlewareNotUsed):
        build(Retry, FakeHandler(), idempotent=False)


def test_the_asyncio_shape_of_a_fake_handler() -> None:
    handler = FakeHandler(UNAVAILABLE, result="ok")
    breaker = build(CircuitBreaker, handler.acall, options={"fail_max": 1}, is_async=True)

    async def run() -> None:
        with pytest.raises(RpcStatusError):
            await breaker.acall(call_for())
        with pytest.raises(RpcStatusError, match="circuit breaker"):
            await breaker.acall(call_for())  # open: the handler is not called again

    asyncio.run(run())
    assert len(handler.calls) == 1


def test_a_fake_stream_and_a_chain_info() -> None:
    info = chain_info(kind=CallKind.UNARY_STREAM)
    assert info.kind.response_streaming and info.side == "client"
    handler = FakeHandler(result=[1, 2, 3], stream=True)
    timeout = build(Timeout, handler, kind=CallKind.UNARY_STREAM, options={"seconds": 5})
    assert list(timeout(call_for(kind=CallKind.UNARY_STREAM))) == [1, 2, 3]
    assert handler.calls[0].deadline is not None
