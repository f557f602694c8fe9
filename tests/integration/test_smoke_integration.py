"""The chain runs end to end between a real client and a real server, in every pairing of
sync and asyncio client and server."""

from __future__ import annotations

from apps.cache.protos import cache_pb2
from tests.support.scripted import ScriptedServicer
from tests.support.servers import Pairing, make_settings


def test_get_through_default_chains(pairing: Pairing) -> None:
    settings = make_settings()
    servicer = ScriptedServicer()
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        assert stub.Get(cache_pb2.GetReq(key="hello")).value == b"hello"
        assert [type(m).__name__ for m in stub.channel.middleware["cache.CacheService/Get"]] == [
            "Retry", "Timeout", "CircuitBreaker",
        ]
        assert [type(m).__name__ for m in server.interceptor.middleware[
            "cache.CacheService/Get"]] == ["RequestLogging", "ConcurrencyLimit"]
        assert len(list(stub.Dump(cache_pb2.DumpReq()))) == 10
        assert servicer.attempts["hello"] == 1
