"""The chain runs end to end between a real client and a real server."""

from __future__ import annotations

from apps.cache.protos import cache_pb2
from tests.support.scripted import ScriptedServicer
from tests.support.servers import client, make_settings, running_server


def test_get_through_default_chains() -> None:
    settings = make_settings()
    servicer = ScriptedServicer()
    with running_server(settings, servicer) as server, client(settings, server.address) as stub:
        assert stub.Get(cache_pb2.GetReq(key="hello")).value == b"hello"
        assert [type(m).__name__ for m in stub.channel.middleware["cache.CacheService/Get"]] == [
            "Retry", "Timeout", "CircuitBreaker",
        ]
        assert [type(m).__name__ for m in server.interceptor.middleware[
            "cache.CacheService/Get"]] == ["RequestLogging", "ConcurrencyLimit"]
        assert len(list(stub.Dump(cache_pb2.DumpReq()))) == 10
