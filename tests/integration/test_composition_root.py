"""One composition root builds every chain: the plain interceptors, the channels, the
servers and showchain get the same metrics recorder, shared state and idempotency. These
are the regressions its absence caused."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from apps.cache.protos import cache_pb2
from resilience.distributed.shared_breaker import RedisCircuitBreaker
from resilience.middleware import Metrics
from tests.integration.test_interceptors import plain_client, plain_server, plain_settings
from tests.support.processes import ROOT, manage
from tests.support.redis import redis_server, redis_settings  # noqa: F401 (a fixture)
from tests.support.scripted import ScriptedServicer
from tests.support.servers import MODES

GET = "cache.CacheService/Get"


def handled(method: str) -> float:
    return REGISTRY.get_sample_value("grpc_client_handled_total", {
        "grpc_type": "unary", "grpc_service": "cache.CacheService", "grpc_method": method,
        "grpc_code": "OK",
    }) or 0.0


@pytest.mark.parametrize("mode", MODES)
def test_the_plain_client_interceptors_count_calls_with_metrics(mode: str) -> None:
    settings = plain_settings(CLIENT_MIDDLEWARE=["resilience.middleware.Metrics"])
    with plain_server("sync", settings, ScriptedServicer()) as address, \
            plain_client(mode, settings, address) as stub:
        before = handled("Get")
        assert stub.Get(cache_pb2.GetReq(key="k"), timeout=5).value == b"k"
        [metrics] = stub.middleware[GET]
        assert isinstance(metrics, Metrics)
        assert handled("Get") == before + 1


@pytest.mark.parametrize("mode", MODES)
def test_the_plain_client_interceptors_give_redis_middleware_their_settings(
    mode: str, redis_server: object,  # noqa: F811
) -> None:
    settings = plain_settings(
        CLIENT_MIDDLEWARE=["resilience.middleware.CircuitBreaker"],
        CLIENT_OPTIONS={"CircuitBreaker": {"storage": "redis"}},
        **redis_settings(redis_server),  # type: ignore[arg-type]
    )
    with plain_server("sync", settings, ScriptedServicer()) as address, \
            plain_client(mode, settings, address) as stub:
        assert stub.Get(cache_pb2.GetReq(key="k"), timeout=5).value == b"k"
        [breaker] = stub.middleware[GET]
        assert isinstance(breaker, RedisCircuitBreaker)


def test_showchain_shows_metrics_in_the_chain_when_metrics_are_on() -> None:
    result = manage("showchain", "--side", "client", GET)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if "Metrics (" in line)
    assert "left out" not in line


def test_build_chain_is_called_from_one_module() -> None:
    callers = set()
    for path in (ROOT / "resilience").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "build_chain":
                callers.add(Path(path).relative_to(ROOT).as_posix())
    assert callers == {"resilience/conf/factory.py"}
