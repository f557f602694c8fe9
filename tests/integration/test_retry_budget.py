"""Retry's budget, server pushback and idempotency rule against a real server, in the four
pairings of sync and asyncio client and server (the ``pairing`` fixture).

The acceptance figures: when the server fails every call with UNAVAILABLE and
``max_attempts`` is 3, the server receives at most 1.1 attempts per client call in steady
state with the budget, and exactly 3.0 without it; at a 1% failure rate retries still
happen. A server answering RESOURCE_EXHAUSTED with ``grpc-retry-pushback-ms: 300`` is
retried after about 300 ms; with ``-1`` it is not retried.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, cast

import grpc
import pytest

from apps.cache.protos import cache_pb2
from resilience.core.call import Call, CallKind
from resilience.core.errors import PUSHBACK_KEY, MiddlewareNotUsed, RpcStatusError
from resilience.core.middleware import ChainInfo, Handler, Middleware, MiddlewareOptions, option
from tests.support.scripted import Plan, ScriptedServicer
from tests.support.servers import Pairing, make_settings

pytestmark = pytest.mark.timeout(60)

GET = "cache.CacheService/Get"
STORE = "cache.CacheService/Store"
DOWN = "fail=UNAVAILABLE"
FLAKY = "flaky"


class PushbackOnce(Middleware):
    """Server middleware for these tests: reject the first Get of each key with
    RESOURCE_EXHAUSTED and a ``grpc-retry-pushback-ms`` trailer; let later ones through."""

    sides = frozenset({"server"})
    async_capable = True

    @dataclasses.dataclass(frozen=True)
    class Options(MiddlewareOptions):
        pushback_ms: str = option("300", "The trailer's value, as the server sends it.")

    def __init__(self, handler: Handler, options: MiddlewareOptions, info: ChainInfo) -> None:
        if info.kind is not CallKind.UNARY_UNARY:
            raise MiddlewareNotUsed("unary calls only")
        super().__init__(handler, options, info)
        self.trailer = ((PUSHBACK_KEY, cast(PushbackOnce.Options, options).pushback_ms),)
        self.lock = threading.Lock()
        self.seen: set[str] = set()

    def _reject_first(self, call: Call) -> None:
        key = call.request.key
        with self.lock:
            first = key not in self.seen
            self.seen.add(key)
        if first:
            raise RpcStatusError(grpc.StatusCode.RESOURCE_EXHAUSTED, "pushed back",
                                 trailing_metadata=self.trailer)

    def __call__(self, call: Call) -> Any:
        self._reject_first(call)
        return self.handler(call)

    async def acall(self, call: Call) -> Any:
        self._reject_first(call)
        return await self.handler(call)


class OnePercentServicer(ScriptedServicer):
    """The scripted cache, where every 100th Get with the key ``flaky`` fails with
    UNAVAILABLE (so the retry of that call, the next one, succeeds)."""

    def plan(self, key: str, attempt: int) -> Plan:  # type: ignore[override]
        if key == FLAKY and attempt % 100 == 0:
            return Plan(code=grpc.StatusCode.UNAVAILABLE, details="scripted 1% failure")
        return ScriptedServicer.plan(key, attempt)


def retry_settings(**retry: Any) -> Any:
    options = {"max_attempts": 3, "initial_backoff": 0.001, "max_backoff": 0.002, **retry}
    return make_settings(
        CLIENT_MIDDLEWARE=["resilience.middleware.Retry"],
        CLIENT_OPTIONS={"Retry": options},
    )


def fail_calls(stub: Any, count: int) -> None:
    for _ in range(count):
        with pytest.raises(grpc.RpcError) as info:
            stub.Get(cache_pb2.GetReq(key=DOWN), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_budget_caps_attempts_when_the_server_is_down_and_retries_come_back(
    pairing: Pairing,
) -> None:
    settings = retry_settings()
    servicer = OnePercentServicer()
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        fail_calls(stub, 50)
        before = servicer.attempts[DOWN]
        fail_calls(stub, 150)
        steady = (servicer.attempts[DOWN] - before) / 150
        assert steady <= 1.1, steady
        retry = stub.channel.middleware[GET][0]
        assert retry.throttled >= 190

        # The server recovers to a 1% failure rate: successes refill the budget and the
        # rare failure is retried again, so every call succeeds.
        retries_before = retry.retries
        for _ in range(300):
            assert stub.Get(cache_pb2.GetReq(key=FLAKY), timeout=10).value == FLAKY.encode()
        failures = servicer.attempts[FLAKY] // 100
        assert failures >= 3
        assert servicer.attempts[FLAKY] == 300 + failures
        assert retry.retries - retries_before == failures


def test_without_the_budget_every_call_makes_max_attempts(pairing: Pairing) -> None:
    settings = retry_settings(budget=False)
    servicer = ScriptedServicer()
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        fail_calls(stub, 200)
        assert servicer.attempts[DOWN] / 200 == 3.0
        assert stub.channel.middleware[GET][0].throttled == 0


def pushback_settings(value: str) -> Any:
    return make_settings(
        CLIENT_MIDDLEWARE=["resilience.middleware.Retry"],
        CLIENT_OPTIONS={"Retry": {
            "retryable_codes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
            "initial_backoff": 0.001, "max_backoff": 0.002, "jitter": "none",
        }},
        SERVER_MIDDLEWARE=["tests.integration.test_retry_budget.PushbackOnce"],
        SERVER_OPTIONS={"PushbackOnce": {"pushback_ms": value}},
    )


def test_server_pushback_sets_the_wait(pairing: Pairing) -> None:
    settings = pushback_settings("300")
    servicer = ScriptedServicer()
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        assert stub.Get(cache_pb2.GetReq(key="warm-up"), timeout=10).value == b"warm-up"
        start = time.monotonic()
        response = stub.Get(cache_pb2.GetReq(key="pushed"), timeout=10)
        elapsed = time.monotonic() - start
        assert response.value == b"pushed"
        assert 0.25 <= elapsed <= 1.0, elapsed
        assert servicer.attempts["pushed"] == 1  # the first attempt never reached it


def test_negative_server_pushback_stops_retries(pairing: Pairing) -> None:
    settings = pushback_settings("-1")
    servicer = ScriptedServicer()
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        with pytest.raises(grpc.RpcError) as info:
            stub.Get(cache_pb2.GetReq(key="refused"), timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert servicer.attempts["refused"] == 0
        assert stub.channel.middleware[GET][0].retries == 0


@pytest.mark.parametrize("marking", ["none", "setting", "option"])
def test_only_idempotent_methods_are_retried(marking: str, pairing: Pairing) -> None:
    """Store is not idempotent in its proto: Retry leaves its chain unless the method is
    listed in IDEMPOTENT_METHODS or Retry is told ``non_idempotent = true``."""
    retry = {"initial_backoff": 0.001, "max_backoff": 0.002,
             "non_idempotent": marking == "option"}
    settings = make_settings(
        CLIENT_MIDDLEWARE=["resilience.middleware.Retry"],
        CLIENT_OPTIONS={"Retry": retry},
        IDEMPOTENT_METHODS=[STORE] if marking == "setting" else [],
    )
    servicer = ScriptedServicer()
    key = "fail=UNAVAILABLE*1"
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        request = cache_pb2.StoreReq(key=key, value=b"v")
        if marking == "none":
            with pytest.raises(grpc.RpcError) as info:
                stub.Store(request, timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert servicer.attempts[key] == 1
            assert stub.channel.middleware[STORE] == []
        else:
            stub.Store(request, timeout=10)
            assert servicer.attempts[key] == 2
            assert [type(m).__name__ for m in stub.channel.middleware[STORE]] == ["Retry"]
        # Get is idempotent in its proto: Retry is in its chain whatever the marking.
        stub.Get(cache_pb2.GetReq(key="x"), timeout=10)
        assert [type(m).__name__ for m in stub.channel.middleware[GET]] == ["Retry"]
