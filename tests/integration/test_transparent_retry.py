"""grpcio's transparent retries on the framework's channels, proven with a real network
fault: ``RefusingProxy`` (tests/support/refuse.py) sits between the client and a real
cache server and makes the first new streams ones the server never processed.

What grpc-core (grpcio 1.85) does, as these tests pin it:
- a stream above a GOAWAY's last stream id is replayed at once on a new connection, and
  the server runs the handler once: the transparent retry a rolling restart needs, safe
  even for the non-idempotent Store, which Retry leaves alone;
- such a replay happens at most once per call: a call whose replay is refused too fails;
- RST_STREAM(REFUSED_STREAM) is *not* replayed (chttp2 marks only GOAWAY'd streams as
  unseen by the server), although RFC 9113 §8.7 would allow it;
- configured retries stay exact: the server sees Retry's ``max_attempts``, a transparent
  replay included, since it happens inside one attempt.

Tests with both sides run in the four pairings of sync and asyncio client and server.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import grpc.aio
import pytest

from apps.cache.protos import cache_pb2, cache_pb2_grpc
from apps.cache.servicer import AsyncCacheServicer, CacheServicer
from apps.cache.storage import MemoryStore
from resilience.core.errors import ImproperlyConfigured
from resilience.transport.aio_client import aio_connect
from resilience.transport.client import connect
from tests.support.aio_facade import LoopThread, SyncMethod
from tests.support.refuse import refusing_proxy
from tests.support.scripted import ScriptedServicer
from tests.support.servers import MODES, Mode, Pairing, client, make_settings, running_server

pytestmark = pytest.mark.timeout(60)

STORE = "cache.CacheService/Store"
GET = "cache.CacheService/Get"


class CountingStore(MemoryStore):
    """The cache's store, counting the values put under each key: one put is one Store
    handler that ran."""

    def __init__(self) -> None:
        super().__init__()
        self.puts: Counter[str] = Counter()

    def put(self, key: str, value: bytes) -> None:
        self.puts[key] += 1
        super().put(key, value)


def cache_servicer(settings: Any, store: MemoryStore, server_mode: Mode) -> Any:
    """The real cache servicer for a server of ``server_mode``, over ``store``."""
    factory = AsyncCacheServicer if server_mode == "aio" else CacheServicer
    return factory(settings, store)


class PlainAioStub:
    """A CacheService stub on a plain grpc.aio channel, driven from sync code."""

    def __init__(self, address: str, options: list[tuple[str, Any]]) -> None:
        self._loop = LoopThread("plain-aio-client")

        async def open_channel() -> tuple[grpc.aio.Channel, Any]:
            channel = grpc.aio.insecure_channel(address, options=options)
            return channel, cache_pb2_grpc.CacheServiceStub(channel)

        self._channel, self._stub = self._loop.run(open_channel())

    def __getattr__(self, name: str) -> SyncMethod:
        return SyncMethod(getattr(self.__dict__["_stub"], name), self.__dict__["_loop"])

    def close(self) -> None:
        try:
            self._loop.run(self._channel.close())
        finally:
            self._loop.close()


@contextlib.contextmanager
def plain_client(mode: Mode, address: str, options: list[tuple[str, Any]]) -> Iterator[Any]:
    """A CacheService stub on a plain grpcio channel (no chain) of ``mode``."""
    if mode == "aio":
        stub = PlainAioStub(address, options)
        try:
            yield stub
        finally:
            stub.close()
        return
    with grpc.insecure_channel(address, options=options) as channel:
        yield cache_pb2_grpc.CacheServiceStub(channel)


def test_a_store_above_a_goaway_reaches_the_server_once(pairing: Pairing) -> None:
    """The first Store's stream is opened on the server but never processed, and the
    client is told so by a GOAWAY; grpc-core replays it on a new connection, once."""
    settings = make_settings()
    store = CountingStore()
    with pairing.server(settings, cache_servicer(settings, store, pairing.server_mode)) as server, \
            refusing_proxy(server.address, how="goaway") as proxy, \
            pairing.client(settings, proxy.address) as stub:
        stub.Store(cache_pb2.StoreReq(key="k", value=b"stored once"), timeout=10)
        chain = [type(m).__name__ for m in stub.channel.middleware[STORE]]
        assert proxy.errors == []
    assert "Retry" not in chain, chain  # Store is not idempotent: the replay is grpcio's
    assert proxy.refused == 1
    assert (proxy.streams, proxy.connections) == (2, 2)
    assert store.puts["k"] == 1
    assert store.get("k") == b"stored once"


@pytest.mark.parametrize("client_mode", MODES)
def test_control_a_channel_without_grpcio_retries_fails(client_mode: Mode) -> None:
    """The same fault on a plain channel with grpc.enable_retries=0: the proxy really does
    refuse, the call fails, and the server never stored anything."""
    settings = make_settings()
    store = CountingStore()
    with running_server(settings, CacheServicer(settings, store)) as server, \
            refusing_proxy(server.address, how="goaway") as proxy, \
            plain_client(client_mode, proxy.address, [("grpc.enable_retries", 0)]) as stub, \
            pytest.raises(grpc.RpcError) as info:
        stub.Store(cache_pb2.StoreReq(key="k", value=b"v"), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "GOAWAY" in (info.value.details() or "")
    assert proxy.refused == 1
    assert store.puts["k"] == 0
    assert store.get("k") is None


@pytest.mark.parametrize("client_mode", MODES)
def test_a_replay_happens_at_most_once_per_call(client_mode: Mode) -> None:
    """The replay of a GOAWAY'd Store is refused too: grpc-core gives up (a written stream
    is replayed once per call), and the next call goes through."""
    settings = make_settings()
    store = CountingStore()
    with running_server(settings, CacheServicer(settings, store)) as server, \
            refusing_proxy(server.address, refuse=2, how="goaway") as proxy, \
            client(settings, proxy.address, mode=client_mode) as stub:
        with pytest.raises(grpc.RpcError) as info:
            stub.Store(cache_pb2.StoreReq(key="k", value=b"v"), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert proxy.refused == 2
        stub.Store(cache_pb2.StoreReq(key="k", value=b"second call"), timeout=10)
    assert store.puts["k"] == 1
    assert store.get("k") == b"second call"


@pytest.mark.parametrize("client_mode", MODES)
def test_grpc_core_does_not_replay_an_rst_stream_refused_stream(client_mode: Mode) -> None:
    """RST_STREAM(REFUSED_STREAM) says the stream was not processed (RFC 9113 §8.7), but
    grpc-core fails the call with UNAVAILABLE. If this starts failing, grpc-core has begun
    replaying refused streams: update docs/reference/middleware/retry.md and docs/design.md."""
    settings = make_settings()
    store = CountingStore()
    with running_server(settings, CacheServicer(settings, store)) as server, \
            refusing_proxy(server.address, how="rst_stream") as proxy, \
            client(settings, proxy.address, mode=client_mode) as stub, \
            pytest.raises(grpc.RpcError) as info:
        stub.Store(cache_pb2.StoreReq(key="k", value=b"v"), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "RST_STREAM" in (info.value.details() or "")
    assert (proxy.refused, proxy.streams, proxy.connections) == (1, 1, 1)
    assert store.puts["k"] == 0


def test_configured_retries_stay_exact(pairing: Pairing) -> None:
    """A Get the server always fails with UNAVAILABLE, whose first stream is also refused:
    grpc-core's replay happens inside Retry's first attempt, so the server sees exactly
    ``max_attempts`` Gets."""
    settings = make_settings(
        CLIENT_MIDDLEWARE=["resilience.middleware.Retry"],
        CLIENT_OPTIONS={"Retry": {"max_attempts": 3, "initial_backoff": 0.01,
                                  "max_backoff": 0.02}},
    )
    servicer = ScriptedServicer()
    with pairing.server(settings, servicer) as server, \
            refusing_proxy(server.address, how="goaway") as proxy, \
            pairing.client(settings, proxy.address) as stub:
        with pytest.raises(grpc.RpcError) as info:
            stub.Get(cache_pb2.GetReq(key="fail=UNAVAILABLE"), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "scripted UNAVAILABLE on attempt 3" in (info.value.details() or "")
        assert stub.channel.middleware[GET][0].retries == 2
    assert proxy.refused == 1
    assert servicer.attempts["fail=UNAVAILABLE"] == 3


# --- service configs given to connect() ----------------------------------------------------


def method_config(**policy: Any) -> str:
    return json.dumps({"methodConfig": [{"name": [{"service": "cache.CacheService"}],
                                         **policy}]})


RETRY_POLICY = {"retryPolicy": {
    "maxAttempts": 5, "initialBackoff": "0.01s", "maxBackoff": "0.01s",
    "backoffMultiplier": 1, "retryableStatusCodes": ["UNAVAILABLE"],
}}
HEDGING_POLICY = {"hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "0.1s"}}


def open_and_close(mode: Mode, options: list[tuple[str, Any]]) -> None:
    """Open a channel with connect() or aio_connect() (on a loop of its own), then close it."""
    settings = make_settings()
    if mode == "sync":
        connect("127.0.0.1:1", settings, options=options).close()
        return
    loop = LoopThread("aio-connect")
    try:

        async def open_close() -> None:
            await aio_connect("127.0.0.1:1", settings, options=options).close()

        loop.run(open_close())
    finally:
        loop.close()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("policy, name", [(RETRY_POLICY, "retryPolicy"),
                                          (HEDGING_POLICY, "hedgingPolicy")])
def test_a_service_config_with_a_retry_or_hedging_policy_is_refused(
    mode: Mode, policy: dict[str, Any], name: str
) -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        open_and_close(mode, [("grpc.service_config", method_config(**policy))])
    message = str(info.value)
    assert f"channel option grpc.service_config gives cache.CacheService a {name}" in message
    assert f"Remove the {name}" in message
    assert "resilience.middleware.Retry" in message


@pytest.mark.parametrize("mode", MODES)
def test_a_service_config_without_policies_is_accepted(mode: Mode) -> None:
    open_and_close(mode, [("grpc.service_config", method_config(waitForReady=False))])


@pytest.mark.parametrize(
    "option, words",
    [(("grpc.service_config", "{not json"), "is not valid JSON"),
     (("grpc.service_config_disable_resolution", 0), "would let the resolver supply")],
)
def test_other_ways_to_configure_grpcio_retries_are_refused(
    option: tuple[str, Any], words: str
) -> None:
    with pytest.raises(ImproperlyConfigured, match=words):
        open_and_close("sync", [option])
