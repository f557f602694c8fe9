"""CircuitBreaker against real servers: it opens after consecutive failures and then fails
fast without touching the network, recovers after reset_timeout, ignores caller errors,
does not serialise calls, and hands its error to a configured fallback.

Every test runs in the four pairings of sync and asyncio client and server (the
``pairing`` fixture).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
import pytest

from apps.cache.protos import cache_pb2
from resilience.core.errors import RpcStatusError
from resilience.middleware import CircuitBreaker
from tests.support import fallbacks
from tests.support.scripted import ScriptedServicer
from tests.support.servers import Pairing, make_settings

pytestmark = pytest.mark.timeout(60)

GET = "cache.CacheService/Get"
FAIL_MAX = 3
RESET_TIMEOUT = 1.0


def breaker_settings(**breaker: Any) -> Any:
    return make_settings(
        CLIENT_MIDDLEWARE=["resilience.middleware.CircuitBreaker"],
        CLIENT_OPTIONS={
            "CircuitBreaker": {"fail_max": FAIL_MAX, "reset_timeout": RESET_TIMEOUT, **breaker}
        },
        SERVER_MAX_WORKERS=32,
    )


def breaker_of(stub: Any, method: str = GET) -> CircuitBreaker:
    [middleware] = stub.channel.middleware[method]
    assert isinstance(middleware, CircuitBreaker)
    return middleware


def timed_failure(stub: Any, key: str) -> tuple[grpc.RpcError, float]:
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        stub.Get(cache_pb2.GetReq(key=key), timeout=5)
    return info.value, time.monotonic() - start


def test_opens_on_a_dead_server_fails_fast_then_recovers(pairing: Pairing) -> None:
    settings = breaker_settings()
    with pairing.server(settings, ScriptedServicer()) as server:
        port = server.port
    # Reconnect quickly once the server is back, so the trial call is not refused by the
    # channel's own reconnect backoff (1 s by default).
    with pairing.client(
        settings, f"127.0.0.1:{port}",
        options=[("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 100)],
    ) as stub:
        breaker = breaker_of(stub)
        for _ in range(FAIL_MAX):
            error, _ = timed_failure(stub, "k")
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert "circuit breaker" not in error.details()
        assert breaker.state == "open"

        for _ in range(3):
            error, elapsed = timed_failure(stub, "k")
            assert elapsed < 0.1
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert "circuit breaker" in error.details()
            assert GET in error.details()

        servicer = ScriptedServicer()
        with pairing.server(settings, servicer, port=port):
            # Still open: the call fails fast and never reaches the new server.
            error, elapsed = timed_failure(stub, "k")
            assert elapsed < 0.1
            assert "circuit breaker" in error.details()
            assert sum(servicer.attempts.values()) == 0

            time.sleep(RESET_TIMEOUT * 1.2)
            deadline = time.monotonic() + 2 * RESET_TIMEOUT
            response = None
            while response is None and time.monotonic() < deadline:
                try:
                    response = stub.Get(cache_pb2.GetReq(key="back"), timeout=5)
                except grpc.RpcError:
                    time.sleep(0.05)
            assert response is not None, "the breaker never let a trial call through"
            assert response.value == b"back"
            assert breaker.state == "closed"
            assert servicer.attempts["back"] >= 1


def test_caller_errors_never_open_it(pairing: Pairing) -> None:
    settings = breaker_settings()
    servicer = ScriptedServicer()
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        for _ in range(50):
            with pytest.raises(grpc.RpcError) as info:
                stub.Get(cache_pb2.GetReq(key="notfound"), timeout=5)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
        breaker = breaker_of(stub)
        assert breaker.state == "closed"
        assert breaker.breaker.fail_counter == 0
        assert servicer.attempts["notfound"] == 50


def test_calls_through_one_breaker_run_in_parallel(pairing: Pairing) -> None:
    settings = breaker_settings()
    servicer = ScriptedServicer()
    calls = 16
    barrier = threading.Barrier(calls)
    outcomes: list[bytes | BaseException | None] = [None] * calls

    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        # One counted failure, so successes take the breaker's locked path as well.
        with pytest.raises(grpc.RpcError):
            stub.Get(cache_pb2.GetReq(key="fail=UNAVAILABLE"), timeout=5)
        assert breaker_of(stub).breaker.fail_counter == 1

        def one(i: int) -> None:
            barrier.wait(timeout=10)
            try:
                outcomes[i] = stub.Get(cache_pb2.GetReq(key="sleep=1.0"), timeout=10).value
            except BaseException as exc:
                outcomes[i] = exc

        threads = [threading.Thread(target=one, args=(i,)) for i in range(calls)]
        start = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        elapsed = time.monotonic() - start

        assert outcomes == [b"sleep=1.0"] * calls
        assert servicer.peak_in_flight == calls
        assert elapsed < 3.0  # one at a time would take 16 s
        assert breaker_of(stub).state == "closed"
        assert breaker_of(stub).breaker.fail_counter == 0


def test_fallback_answers_while_open_and_gets_the_breakers_error(pairing: Pairing) -> None:
    settings = breaker_settings(fallback="tests.support.fallbacks.fallback_value")
    servicer = ScriptedServicer()
    fallbacks.received.clear()
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        # Failures with a failure code also go to the fallback, with the server's error.
        for _ in range(FAIL_MAX):
            assert stub.Get(cache_pb2.GetReq(key="fail=UNAVAILABLE"), timeout=5).value == (
                b"fallback"
            )
        assert len(fallbacks.received) == FAIL_MAX
        assert "scripted UNAVAILABLE" in fallbacks.received[-1][1].details()
        assert breaker_of(stub).state == "open"

        assert stub.Get(cache_pb2.GetReq(key="hello"), timeout=5).value == b"fallback"
        assert servicer.attempts["hello"] == 0
        assert len(fallbacks.received) == FAIL_MAX + 1
        request, error = fallbacks.received[-1]
        assert request.key == "hello"
        assert isinstance(error, RpcStatusError)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "circuit breaker" in error.details()
        assert GET in error.details()
        assert error.retryable is False
    fallbacks.received.clear()
