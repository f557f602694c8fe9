"""Per-method chains and options on one real channel: CLIENT_METHOD_MIDDLEWARE replaces the
chain of one method, and CLIENT_METHOD_OPTIONS overrides options per service and per method,
the most specific key winning.

Every test runs in the four pairings of sync and asyncio client and server (the
``pairing`` fixture).
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest

from apps.cache.protos import cache_pb2
from tests.support.scripted import ScriptedServicer
from tests.support.servers import Pairing, make_settings

pytestmark = pytest.mark.timeout(60)

GET = "cache.CacheService/Get"
STORE = "cache.CacheService/Store"
DUMP = "cache.CacheService/Dump"
CHAIN = [
    "resilience.middleware.Retry",
    "resilience.middleware.Timeout",
    "resilience.middleware.CircuitBreaker",
]
RETRY = {"max_attempts": 3, "initial_backoff": 0.01, "max_backoff": 0.02}


def names(stub: Any, method: str) -> list[str]:
    return [type(m).__name__ for m in stub.channel.middleware[method]]


def middleware(stub: Any, method: str, name: str) -> Any:
    [found] = [m for m in stub.channel.middleware[method] if type(m).__name__ == name]
    return found


def test_method_chain_replaces_the_default_chain_for_that_method_only(pairing: Pairing) -> None:
    settings = make_settings(
        CLIENT_MIDDLEWARE=CHAIN,
        CLIENT_OPTIONS={"Retry": RETRY},
        CLIENT_METHOD_MIDDLEWARE={STORE: ["resilience.middleware.Timeout"]},
    )
    servicer = ScriptedServicer()
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        assert names(stub, GET) == ["Retry", "Timeout", "CircuitBreaker"]
        assert names(stub, DUMP) == ["Retry", "Timeout", "CircuitBreaker"]
        assert names(stub, STORE) == ["Timeout"]

        response = stub.Get(cache_pb2.GetReq(key="fail=UNAVAILABLE*2"), timeout=5)
        assert response.value == b"fail=UNAVAILABLE*2"
        assert servicer.attempts["fail=UNAVAILABLE*2"] == 3

        # The same script under a key of its own ("02" is 2), so the counters stay apart:
        # retried, this Store would succeed on its third attempt.
        with pytest.raises(grpc.RpcError) as info:
            stub.Store(cache_pb2.StoreReq(key="fail=UNAVAILABLE*02", value=b"v"), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert servicer.attempts["fail=UNAVAILABLE*02"] == 1


def test_method_options_override_client_options_for_that_method_only(pairing: Pairing) -> None:
    settings = make_settings(
        CLIENT_MIDDLEWARE=CHAIN,
        CLIENT_OPTIONS={"Retry": RETRY, "Timeout": {"seconds": 5}},
        CLIENT_METHOD_OPTIONS={GET: {"Timeout": {"seconds": 0.2}}},
    )
    servicer = ScriptedServicer()
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        assert middleware(stub, GET, "Timeout").options.seconds == 0.2
        assert middleware(stub, DUMP, "Timeout").options.seconds == 5
        assert middleware(stub, STORE, "Timeout").options.seconds == 5

        assert stub.Get(cache_pb2.GetReq(key="warm"), timeout=5).value == b"warm"
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.Get(cache_pb2.GetReq(key="sleep=2"))
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - start < 1.0
        remaining = servicer.time_remaining["sleep=2"]
        assert remaining is not None
        assert 0 < remaining <= 0.2 + 0.01  # grpc rounds the timeout it sends up
        # Dump keeps the 5 s of CLIENT_OPTIONS and completes.
        assert len(list(stub.Dump(cache_pb2.DumpReq()))) == 10


def test_service_key_applies_to_every_method_and_the_method_key_wins(pairing: Pairing) -> None:
    settings = make_settings(
        CLIENT_MIDDLEWARE=CHAIN,
        CLIENT_OPTIONS={"Retry": RETRY, "Timeout": {"seconds": 5}},
        CLIENT_METHOD_OPTIONS={
            "cache.CacheService": {
                "Timeout": {"seconds": 3},
                "Retry": {"max_attempts": 2},
            },
            GET: {"Timeout": {"seconds": 0.2}, "Retry": {"initial_backoff": 0.015}},
        },
    )
    servicer = ScriptedServicer()
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        assert middleware(stub, GET, "Timeout").options.seconds == 0.2
        assert middleware(stub, DUMP, "Timeout").options.seconds == 3
        assert middleware(stub, STORE, "Timeout").options.seconds == 3
        # Merged option by option: each table only changes the options it names.
        get_retry = middleware(stub, GET, "Retry").options
        assert (get_retry.max_attempts, get_retry.initial_backoff, get_retry.max_backoff) == (
            2, 0.015, 0.02,
        )
        dump_retry = middleware(stub, DUMP, "Retry").options
        assert (dump_retry.max_attempts, dump_retry.initial_backoff) == (2, 0.01)

        # Observable through real calls: max_attempts 2 from the service key.
        with pytest.raises(grpc.RpcError) as info:
            stub.Get(cache_pb2.GetReq(key="fail=UNAVAILABLE*2"), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert servicer.attempts["fail=UNAVAILABLE*2"] == 2
