"""Fallback with the cache app's example (``apps.cache.fallbacks``) against real servers:
a key that was read once is answered from the last value seen when the server fails it
with a configured code, and when a circuit breaker below has opened on a dead server;
other codes, and keys never seen, get the server's error.

Every test runs in the four pairings of sync and asyncio client and server (the
``pairing`` fixture).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from apps.cache import fallbacks
from apps.cache.protos import cache_pb2
from resilience.middleware import CircuitBreaker, Fallback
from tests.support.scripted import Plan, ScriptedServicer
from tests.support.servers import Pairing, make_settings

pytestmark = pytest.mark.timeout(60)

GET = "cache.CacheService/Get"
FALLBACK_OPTIONS = {
    "function": "apps.cache.fallbacks.last_value",
    "observe": "apps.cache.fallbacks.observe",
}

#: The errors ``recording_last_value`` was given, oldest first.
errors: list[grpc.RpcError] = []


def recording_last_value(request: Any, error: grpc.RpcError) -> Any:
    """The shipped ``last_value``, remembering which error it answered."""
    errors.append(error)
    return fallbacks.last_value(request, error)


class SwitchableServicer(ScriptedServicer):
    """Answers each key with ``values[key]``, or fails it with ``failing[key]``; the test
    changes both while the server runs (the asyncio server reads the same books)."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, bytes] = {}
        self.failing: dict[str, grpc.StatusCode] = {}

    def plan(self, key: str, attempt: int) -> Plan:  # type: ignore[override]
        code = self.failing.get(key)
        if code is None:
            return Plan()
        return Plan(code=code, details=f"switched to {code.name}")

    def answer(self, key: str) -> cache_pb2.GetResp:  # type: ignore[override]
        return cache_pb2.GetResp(value=self.values.get(key, key.encode()))


@pytest.fixture(autouse=True)
def _fresh_values() -> Iterator[None]:
    fallbacks.last_values.clear()
    errors.clear()
    yield
    fallbacks.last_values.clear()
    errors.clear()


def served(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == "fallback_served"]


def get(stub: Any, key: str) -> bytes:
    return stub.Get(cache_pb2.GetReq(key=key), timeout=5).value


def test_serves_the_last_value_only_for_configured_codes(pairing: Pairing) -> None:
    settings = make_settings(
        CLIENT_MIDDLEWARE=["resilience.middleware.Fallback"],
        CLIENT_OPTIONS={"Fallback": FALLBACK_OPTIONS},
    )
    servicer = SwitchableServicer()
    servicer.values["k"] = b"v1"
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        [fallback] = stub.channel.middleware[GET]
        assert isinstance(fallback, Fallback)
        with capture_logs() as logs:
            assert get(stub, "k") == b"v1"
            assert served(logs) == []

            servicer.values["k"] = b"v2"  # never seen by this client
            servicer.failing["k"] = grpc.StatusCode.UNAVAILABLE
            assert get(stub, "k") == b"v1"
            assert served(logs) == [{"event": "fallback_served", "method": GET,
                                     "code": "UNAVAILABLE", "log_level": "warning"}]

            # A key never seen: the server's error, unchanged, and nothing served.
            servicer.failing["unseen"] = grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.RpcError) as info:
                get(stub, "unseen")
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert info.value.details() == "switched to UNAVAILABLE"

            # Not a configured code: passes through although a value is cached.
            servicer.failing["k"] = grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as info:
                get(stub, "k")
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert len(served(logs)) == 1

            del servicer.failing["k"]
            assert get(stub, "k") == b"v2"
        assert servicer.attempts["k"] == 4


def test_serves_the_last_value_when_the_breaker_opens_on_a_dead_server(
    pairing: Pairing,
) -> None:
    settings = make_settings(
        CLIENT_MIDDLEWARE=[
            "resilience.middleware.Fallback",
            "resilience.middleware.Retry",
            "resilience.middleware.CircuitBreaker",
        ],
        CLIENT_OPTIONS={
            "Fallback": {**FALLBACK_OPTIONS, "function": f"{__name__}.recording_last_value"},
            "Retry": {"max_attempts": 2, "initial_backoff": 0.01, "max_backoff": 0.02},
            "CircuitBreaker": {"fail_max": 3, "reset_timeout": 30},
        },
    )
    servicer = SwitchableServicer()
    servicer.values["k"] = b"last"
    with contextlib.ExitStack() as server_scope:
        server = server_scope.enter_context(pairing.server(settings, servicer))
        with pairing.client(settings, server.address) as stub:
            breaker = stub.channel.middleware[GET][-1]
            assert isinstance(breaker, CircuitBreaker)
            assert get(stub, "k") == b"last"
            server_scope.close()  # the server is gone

            with capture_logs() as logs:
                for _ in range(10):
                    assert get(stub, "k") == b"last"
                    if breaker.state == "open":
                        break
                assert breaker.state == "open"
                assert "circuit breaker" not in errors[0].details()

                start = time.monotonic()
                assert get(stub, "k") == b"last"  # fails fast in the breaker, then served
                assert time.monotonic() - start < 1.0
                assert "circuit breaker" in errors[-1].details()
                assert all(entry["code"] == "UNAVAILABLE" for entry in served(logs))
                assert len(served(logs)) == len(errors)

                with pytest.raises(grpc.RpcError) as info:
                    get(stub, "unseen")
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "circuit breaker" in info.value.details()
