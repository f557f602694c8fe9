"""Retry against a real server: it makes exactly the attempts configured (no grpcio
retryPolicy multiplies them), retries only retryable statuses, spaces attempts with growing
backoffs, and never sleeps past the call's deadline.

Every test runs in the four pairings of sync and asyncio client and server (the
``pairing`` fixture).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import grpc
import grpc.aio
import pytest
from structlog.testing import capture_logs

from apps.cache.protos import cache_pb2, cache_pb2_grpc
from resilience.conf.factory import ChainFactory
from resilience.core.errors import ImproperlyConfigured
from resilience.transport.aio_client import AioResilientChannel, aio_connect
from resilience.transport.client import ResilientChannel, connect
from tests.support.scripted import ScriptedServicer
from tests.support.servers import Pairing, make_settings

pytestmark = pytest.mark.timeout(60)

GET = "cache.CacheService/Get"


def retry_settings(**retry: Any) -> Any:
    options = {"max_attempts": 4, "initial_backoff": 0.01, "max_backoff": 0.02, **retry}
    return make_settings(
        CLIENT_MIDDLEWARE=["resilience.middleware.Retry"],
        CLIENT_OPTIONS={"Retry": options},
    )


def retry_events(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry.get("event") == "retrying"]


def test_always_unavailable_makes_exactly_max_attempts(pairing: Pairing) -> None:
    settings = retry_settings()
    servicer = ScriptedServicer()
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        with pytest.raises(grpc.RpcError) as info:
            stub.Get(cache_pb2.GetReq(key="fail=UNAVAILABLE"), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "scripted UNAVAILABLE on attempt 4" in info.value.details()
        assert servicer.attempts["fail=UNAVAILABLE"] == 4
        assert stub.channel.middleware[GET][0].retries == 3


def test_succeeds_on_the_attempt_after_transient_failures(pairing: Pairing) -> None:
    settings = retry_settings()
    servicer = ScriptedServicer()
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        response = stub.Get(cache_pb2.GetReq(key="fail=UNAVAILABLE*2"), timeout=10)
        assert response.value == b"fail=UNAVAILABLE*2"
        assert servicer.attempts["fail=UNAVAILABLE*2"] == 3


@pytest.mark.parametrize(
    "key, code",
    [("notfound", grpc.StatusCode.NOT_FOUND),
     ("fail=INVALID_ARGUMENT", grpc.StatusCode.INVALID_ARGUMENT)],
)
def test_non_retryable_status_is_attempted_once(
    key: str, code: grpc.StatusCode, pairing: Pairing
) -> None:
    settings = retry_settings()
    servicer = ScriptedServicer()
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        with capture_logs() as logs, pytest.raises(grpc.RpcError) as info:
            stub.Get(cache_pb2.GetReq(key=key), timeout=10)
        assert info.value.code() == code
        assert servicer.attempts[key] == 1
        assert retry_events(logs) == []


def test_full_jitter_backoffs_stay_under_a_growing_cap(pairing: Pairing) -> None:
    settings = retry_settings(
        max_attempts=5, backoff="exponential", jitter="full",
        initial_backoff=0.02, multiplier=2, max_backoff=1.0,
    )
    servicer = ScriptedServicer()
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        with capture_logs() as logs, pytest.raises(grpc.RpcError) as info:
            stub.Get(cache_pb2.GetReq(key="fail=UNAVAILABLE"), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        events = retry_events(logs)
        assert [e["attempt"] for e in events] == [1, 2, 3, 4]
        for event in events:
            cap_ms = 20 * 2 ** (event["attempt"] - 1)
            assert 0 <= event["backoff_ms"] <= cap_ms, event
            assert event["method"] == GET
            assert event["code"] == "UNAVAILABLE"
        assert servicer.attempts["fail=UNAVAILABLE"] == 5


def test_backoffs_without_jitter_are_exact(pairing: Pairing) -> None:
    settings = retry_settings(
        max_attempts=5, backoff="exponential", jitter="none",
        initial_backoff=0.02, multiplier=2, max_backoff=1.0,
    )
    servicer = ScriptedServicer()
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        start = time.monotonic()
        with capture_logs() as logs, pytest.raises(grpc.RpcError):
            stub.Get(cache_pb2.GetReq(key="fail=UNAVAILABLE"), timeout=10)
        elapsed = time.monotonic() - start
        assert [e["backoff_ms"] for e in retry_events(logs)] == [20, 40, 80, 160]
        # The waits really happened: 0.3 s of backoff in all.
        assert elapsed >= 0.29
        assert servicer.attempts["fail=UNAVAILABLE"] == 5


def test_never_sleeps_past_the_deadline(pairing: Pairing) -> None:
    settings = retry_settings(initial_backoff=1.0, max_backoff=1.0, jitter="none")
    servicer = ScriptedServicer()
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        assert stub.Get(cache_pb2.GetReq(key="warm"), timeout=5).value == b"warm"
        start = time.monotonic()
        with capture_logs() as logs, pytest.raises(grpc.RpcError) as info:
            stub.Get(cache_pb2.GetReq(key="fail=UNAVAILABLE"), timeout=0.3)
        elapsed = time.monotonic() - start
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert elapsed < 0.5
        assert servicer.attempts["fail=UNAVAILABLE"] == 1
        assert retry_events(logs) == []


GRPC_RETRY_POLICY = json.dumps({
    "methodConfig": [{
        "name": [{"service": "cache.CacheService"}],
        "retryPolicy": {
            "maxAttempts": 5,
            "initialBackoff": "0.01s",
            "maxBackoff": "0.01s",
            "backoffMultiplier": 1,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }],
})


def test_a_service_config_retry_policy_multiplies_attempts_and_connect_refuses_it(
    pairing: Pairing,
) -> None:
    """A service config that asks grpcio to retry UNAVAILABLE 5 times multiplies our 2
    attempts into 10 on a plain channel. connect() and aio_connect() keep grpcio's
    transparent retries but refuse that option, so on their channels the server sees
    exactly Retry's 2 attempts."""
    settings = retry_settings(max_attempts=2)
    options = [("grpc.service_config", GRPC_RETRY_POLICY)]
    opener = aio_connect if pairing.client_mode == "aio" else connect
    with pytest.raises(ImproperlyConfigured, match=r"gives cache\.CacheService a retryPolicy"):
        opener("127.0.0.1:1", settings, options=options)
    servicer = ScriptedServicer()
    with pairing.server(settings, servicer) as server:
        if pairing.client_mode == "aio":
            asyncio.run(aio_calls_with_service_config(server.address, settings, options))
        else:
            channels = {
                "fail=UNAVAILABLE": connect(server.address, settings),
                "fail=UNAVAILABLE*99": ResilientChannel(
                    grpc.insecure_channel(server.address, options=options),
                    ChainFactory(settings, "client"),
                ),
            }
            for key, channel in channels.items():
                with channel, pytest.raises(grpc.RpcError):
                    cache_pb2_grpc.CacheServiceStub(channel).Get(
                        cache_pb2.GetReq(key=key), timeout=10
                    )
    assert servicer.attempts["fail=UNAVAILABLE"] == 2
    assert servicer.attempts["fail=UNAVAILABLE*99"] == 2 * 5


async def aio_calls_with_service_config(
    address: str, settings: Any, options: list[tuple[str, Any]]
) -> None:
    """The calls of the test above on asyncio channels: aio_connect's (without the refused
    option), and the control with it."""
    channels = {
        "fail=UNAVAILABLE": aio_connect(address, settings),
        "fail=UNAVAILABLE*99": AioResilientChannel(
            grpc.aio.insecure_channel(address, options=options),
            ChainFactory(settings, "client", is_async=True),
        ),
    }
    for key, channel in channels.items():
        async with channel:
            with pytest.raises(grpc.RpcError):
                await cache_pb2_grpc.CacheServiceStub(channel).Get(
                    cache_pb2.GetReq(key=key), timeout=10
                )
