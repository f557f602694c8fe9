"""runclient load's live view shows each method's breaker state as it changes, on the sync
and the asyncio client, read from the channel the load runs on."""

from __future__ import annotations

import grpc
import pytest

from apps.cache.management.commands.runclient import breaker_states, progress_line
from apps.cache.protos import cache_pb2
from resilience.loadgen import LoadResult
from tests.support.scripted import ScriptedServicer
from tests.support.servers import MODES, client, make_settings, running_server

pytestmark = pytest.mark.timeout(60)

GET = "cache.CacheService/Get"


@pytest.mark.parametrize("mode", MODES)
def test_live_view_shows_each_breaker_state(mode: str) -> None:
    settings = make_settings(
        CLIENT_MIDDLEWARE=["resilience.middleware.CircuitBreaker"],
        CLIENT_OPTIONS={"CircuitBreaker": {"fail_max": 2, "reset_timeout": 30}},
    )
    result = LoadResult()
    with running_server(settings, ScriptedServicer()) as server, \
            client(settings, server.address, mode=mode) as stub:
        channel = stub.channel
        stub.Get(cache_pb2.GetReq(key="k"), timeout=10)
        result.record("OK", 0.001)
        line = progress_line("Get", 10, result, channel)
        assert line.startswith("Get: 1/10 calls, 1 ok; breakers: ")
        assert "Get closed" in line
        for _ in range(2):
            with pytest.raises(grpc.RpcError):
                stub.Get(cache_pb2.GetReq(key="fail=UNAVAILABLE"), timeout=10)
        assert ("cache.CacheService/Get", "open") in breaker_states(channel)
        assert "Get open" in progress_line("Get", 10, result, channel)
        # Only the methods the load calls, when it says which.
        assert breaker_states(channel, {GET}) == [(GET, "open")]
        assert progress_line("Get", 10, result, channel, {GET}).endswith("; breakers: Get open")
