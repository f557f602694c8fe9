"""The Metrics middleware and the resilience metrics against real calls, in the four
pairings of sync and asyncio client and server.

The registry is one per process, so every test reads deltas around what it does.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from apps.cache.protos import cache_pb2
from resilience.middleware import Metrics
from tests.support.scripted import ScriptedServicer
from tests.support.servers import Pairing, make_settings

pytestmark = pytest.mark.timeout(60)

SERVICE = "cache.CacheService"
METRICS = "resilience.middleware.Metrics"


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def handled(side: str, method: str, code: str, grpc_type: str = "unary") -> float:
    return value(f"grpc_{side}_handled_total", grpc_type=grpc_type, grpc_service=SERVICE,
                 grpc_method=method, grpc_code=code)


def rpc(name: str, method: str, grpc_type: str = "unary") -> float:
    return value(name, grpc_type=grpc_type, grpc_service=SERVICE, grpc_method=method)


def event(name: str, side: str, method: str = "Get", **labels: str) -> float:
    return value(name, side=side, grpc_service=SERVICE, grpc_method=method, **labels)


class Deltas:
    """Reads ``probes`` now; ``delta()`` says how much each has grown since."""

    def __init__(self, **probes: Any) -> None:
        self.probes = probes
        self.before = {name: probe() for name, probe in probes.items()}

    def delta(self) -> dict[str, float]:
        return {name: probe() - self.before[name] for name, probe in self.probes.items()}


def get(stub: Any, key: str, **kwargs: Any) -> grpc.StatusCode:
    try:
        stub.Get(cache_pb2.GetReq(key=key), timeout=10, **kwargs)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_handled_counts_by_code_on_both_sides(pairing: Pairing) -> None:
    settings = make_settings(CLIENT_MIDDLEWARE=[METRICS], SERVER_MIDDLEWARE=[METRICS])
    codes = ("OK", "NOT_FOUND", "INVALID_ARGUMENT")
    probes: dict[str, Any] = {}
    for side in ("client", "server"):
        for code in codes:
            probes[f"{side} {code}"] = lambda s=side, c=code: handled(s, "Get", c)
        probes[f"{side} started"] = lambda s=side: rpc(f"grpc_{s}_started_total", "Get")
        probes[f"{side} dump"] = lambda s=side: handled(s, "Dump", "OK", "server_stream")
    probes["client received"] = lambda: rpc("grpc_client_msg_received_total", "Get")
    probes["client sent"] = lambda: rpc("grpc_client_msg_sent_total", "Get")
    probes["server dump sent"] = lambda: rpc(
        "grpc_server_msg_sent_total", "Dump", "server_stream")
    probes["client dump received"] = lambda: rpc(
        "grpc_client_msg_received_total", "Dump", "server_stream")
    probes["client latency count"] = lambda: rpc("grpc_client_handling_seconds_count", "Get")
    probes["server latency count"] = lambda: rpc("grpc_server_handling_seconds_count", "Get")
    deltas = Deltas(**probes)
    servicer = ScriptedServicer(dump_items=5)
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        assert get(stub, "a") is grpc.StatusCode.OK
        assert get(stub, "b") is grpc.StatusCode.OK
        assert get(stub, "notfound") is grpc.StatusCode.NOT_FOUND
        assert get(stub, "fail=INVALID_ARGUMENT") is grpc.StatusCode.INVALID_ARGUMENT
        assert len(list(stub.Dump(cache_pb2.DumpReq(), timeout=10))) == 5
        assert isinstance(stub.channel.middleware[f"{SERVICE}/Get"][0], Metrics)
        # The server records a call as its handler returns, just before the client hears.
        deadline = time.monotonic() + 5
        while deltas.delta()["server dump"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    expected = {
        "OK": 2, "NOT_FOUND": 1, "INVALID_ARGUMENT": 1, "started": 4, "dump": 1,
    }
    got = deltas.delta()
    for side in ("client", "server"):
        for what, count in expected.items():
            assert got[f"{side} {what}"] == count, (side, what, got)
    assert got["client sent"] == 4
    assert got["client received"] == 2  # failed calls receive no message
    assert got["server dump sent"] == 5
    assert got["client dump received"] == 5
    assert got["client latency count"] == 4
    assert got["server latency count"] == 4


def test_retries_are_counted_and_handled_once_per_call(pairing: Pairing) -> None:
    settings = make_settings(
        CLIENT_MIDDLEWARE=[METRICS, "resilience.middleware.Retry"],
        CLIENT_OPTIONS={"Retry": {"max_attempts": 4, "initial_backoff": 0.01,
                                  "max_backoff": 0.02, "budget": False}},
        SERVER_MIDDLEWARE=[METRICS],
    )
    deltas = Deltas(
        retries=lambda: event("resilience_retries_total", "client"),
        client_ok=lambda: handled("client", "Get", "OK"),
        client_unavailable=lambda: handled("client", "Get", "UNAVAILABLE"),
        server_unavailable=lambda: handled("server", "Get", "UNAVAILABLE"),
    )
    with pairing.server(settings, ScriptedServicer()) as server, \
            pairing.client(settings, server.address) as stub:
        assert get(stub, "fail=UNAVAILABLE*2") is grpc.StatusCode.OK
    assert deltas.delta() == {
        "retries": 2, "client_ok": 1, "client_unavailable": 0, "server_unavailable": 2,
    }


def test_concurrency_rejection_and_limiter_gauges(pairing: Pairing) -> None:
    settings = make_settings(
        CLIENT_MIDDLEWARE=[],
        SERVER_MIDDLEWARE=[METRICS, "resilience.middleware.ConcurrencyLimit"],
        SERVER_OPTIONS={"ConcurrencyLimit": {"max_in_flight": 1, "scope": "method"}},
        SERVER_MAX_WORKERS=8,
    )
    gauge = {"limiter": "ConcurrencyLimit"}
    deltas = Deltas(
        throttled=lambda: event("resilience_rejections_total", "server", reason="throttle"),
        exhausted=lambda: handled("server", "Get", "RESOURCE_EXHAUSTED"),
    )
    servicer = ScriptedServicer()
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub, \
            ThreadPoolExecutor(1) as pool:
        slow = pool.submit(get, stub, "sleep=0.5")
        deadline = time.monotonic() + 5
        while servicer.in_flight < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert servicer.in_flight == 1
        assert event("resilience_limiter_limit", "server", **gauge) == 1
        assert event("resilience_limiter_in_flight", "server", **gauge) == 1
        assert get(stub, "fast") is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert slow.result(timeout=10) is grpc.StatusCode.OK
        assert event("resilience_limiter_in_flight", "server", **gauge) == 0
    assert deltas.delta() == {"throttled": 1, "exhausted": 1}


def test_breaker_state_transitions_and_rejections(pairing: Pairing) -> None:
    settings = make_settings(
        CLIENT_MIDDLEWARE=[METRICS, "resilience.middleware.CircuitBreaker"],
        CLIENT_OPTIONS={"CircuitBreaker": {"fail_max": 1, "reset_timeout": 30.0}},
        SERVER_MIDDLEWARE=[],
    )
    deltas = Deltas(
        opened=lambda: event("resilience_breaker_transitions_total", "client",
                             from_state="closed", to_state="open"),
        rejected=lambda: event("resilience_rejections_total", "client", reason="breaker_open"),
        local_unavailable=lambda: handled("client", "Get", "UNAVAILABLE"),
    )
    with pairing.server(settings, ScriptedServicer()) as server, \
            pairing.client(settings, server.address) as stub:
        assert get(stub, "ok") is grpc.StatusCode.OK
        assert event("resilience_breaker_state", "client") == 0
        assert get(stub, "fail=UNAVAILABLE") is grpc.StatusCode.UNAVAILABLE
        assert event("resilience_breaker_state", "client") == 1
        assert get(stub, "ok") is grpc.StatusCode.UNAVAILABLE  # failing fast
    assert deltas.delta() == {"opened": 1, "rejected": 1, "local_unavailable": 2}


def _all_samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in REGISTRY.collect()
        if family.name.startswith(("grpc_", "resilience_"))
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_disabled_metrics_leave_every_chain_and_count_nothing(pairing: Pairing) -> None:
    settings = make_settings(
        METRICS_ENABLED=False,
        CLIENT_MIDDLEWARE=[METRICS, "resilience.middleware.Retry"],
        CLIENT_OPTIONS={"Retry": {"initial_backoff": 0.01, "budget": False}},
        SERVER_MIDDLEWARE=[METRICS, "resilience.middleware.ConcurrencyLimit"],
    )
    before = _all_samples()
    with pairing.server(settings, ScriptedServicer()) as server, \
            pairing.client(settings, server.address) as stub:
        assert get(stub, "fail=UNAVAILABLE*1") is grpc.StatusCode.OK
        assert get(stub, "notfound") is grpc.StatusCode.NOT_FOUND
        client_chain = stub.channel.middleware[f"{SERVICE}/Get"]
        server_chain = server.interceptor.middleware[f"{SERVICE}/Get"]
    assert [type(m).__name__ for m in client_chain] == ["Retry"]
    assert [type(m).__name__ for m in server_chain] == ["ConcurrencyLimit"]
    assert _all_samples() == before
