"""Server ConcurrencyLimit against real calls: overload turns into prompt RESOURCE_EXHAUSTED
answers, never more than the limit runs, and cancelled calls and streams give their slots
back.

Every test runs in the four pairings of sync and asyncio client and server (the
``pairing`` fixture).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from apps.cache.protos import cache_pb2, cache_pb2_grpc
from resilience.middleware import ConcurrencyLimit
from tests.support.scripted import ScriptedServicer
from tests.support.servers import Pairing, make_settings

pytestmark = pytest.mark.timeout(60)

N = 4
GET = "cache.CacheService/Get"
DUMP = "cache.CacheService/Dump"


def limited_settings(scope: str = "server", limit: int = N, client_chain: Any = ()) -> Any:
    return make_settings(
        CLIENT_MIDDLEWARE=list(client_chain),
        SERVER_MIDDLEWARE=["resilience.middleware.ConcurrencyLimit"],
        SERVER_OPTIONS={"ConcurrencyLimit": {"max_in_flight": limit, "scope": scope}},
        SERVER_MAX_WORKERS=32,
    )


def limiter(server: Any, method: str) -> ConcurrencyLimit:
    [middleware] = server.interceptor.middleware[method]
    assert isinstance(middleware, ConcurrencyLimit)
    return middleware


@contextlib.contextmanager
def cancellable_client(pairing: Pairing, settings: Any, address: str) -> Iterator[Any]:
    """A stub whose unary calls have ``.future()`` (whose future cancels the call) and whose
    streams have ``.cancel()``: a plain grpc channel's for a sync client, since the resilient
    sync channel has no ``future()``; the aio façade's for an aio client, whose future
    cancels the task awaiting the call."""
    if pairing.client_mode == "aio":
        with pairing.client(settings, address) as stub:
            yield stub
        return
    with grpc.insecure_channel(address) as channel:
        yield cache_pb2_grpc.CacheServiceStub(channel)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``condition`` until it holds; fail the test if it does not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(0.01)


def test_overload_admits_exactly_the_limit_and_rejects_the_rest_promptly(
    pairing: Pairing,
) -> None:
    settings = limited_settings()
    servicer = ScriptedServicer()
    calls = 4 * N
    barrier = threading.Barrier(calls)
    results: list[tuple[Any, float, str] | None] = [None] * calls

    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        assert stub.channel.middleware[GET] == []
        # Connect first, so that every timed call below measures the server, not the dial.
        assert stub.Get(cache_pb2.GetReq(key="warm"), timeout=5).value == b"warm"

        def one(i: int) -> None:
            barrier.wait(timeout=10)
            start = time.monotonic()
            try:
                stub.Get(cache_pb2.GetReq(key="sleep=1.0"), timeout=10)
            except grpc.RpcError as exc:
                results[i] = (exc.code(), time.monotonic() - start, exc.details())
            else:
                results[i] = ("ok", time.monotonic() - start, "")

        threads = [threading.Thread(target=one, args=(i,)) for i in range(calls)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in threads)

        done = [r for r in results if r is not None]
        assert len(done) == calls
        admitted = [r for r in done if r[0] == "ok"]
        rejected = [r for r in done if r[0] == grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert len(admitted) == N, done
        assert len(rejected) == calls - N, done
        assert servicer.attempts["sleep=1.0"] == N
        assert servicer.peak_in_flight <= N
        for _, elapsed, _ in admitted:
            assert elapsed >= 0.9
        for _, elapsed, details in rejected:
            assert elapsed < 0.5
            assert "concurrency limit reached" in details
            assert f"{N} calls in flight" in details
        wait_until(lambda: limiter(server, GET).in_flight == 0)
        # The freed slots take new calls again.
        assert stub.Get(cache_pb2.GetReq(key="after"), timeout=5).value == b"after"


def test_cancelled_unary_calls_give_their_slots_back(pairing: Pairing) -> None:
    settings = limited_settings()
    servicer = ScriptedServicer()
    with pairing.server(settings, servicer) as server, \
            cancellable_client(pairing, settings, server.address) as stub:
        futures = [stub.Get.future(cache_pb2.GetReq(key="sleep=30"), timeout=60) for _ in range(N)]
        wait_until(lambda: servicer.in_flight == N)
        middleware = limiter(server, GET)
        assert middleware.in_flight == N
        with pytest.raises(grpc.RpcError) as full:
            stub.Get(cache_pb2.GetReq(key="one too many"), timeout=5)
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        for future in futures:
            assert future.cancel()
        wait_until(lambda: middleware.in_flight == 0)
        assert stub.Get(cache_pb2.GetReq(key="after"), timeout=5).value == b"after"
        assert middleware.in_flight == 0


def test_cancelled_stream_gives_its_slot_back(pairing: Pairing) -> None:
    settings = limited_settings()
    servicer = ScriptedServicer(dump_items=1000, dump_delay=0.01)
    with pairing.server(settings, servicer) as server, \
            cancellable_client(pairing, settings, server.address) as stub:
        responses = stub.Dump(cache_pb2.DumpReq(), timeout=60)
        keys = []
        for item in responses:
            keys.append(item.key)
            if len(keys) == 5:
                break
        assert keys == [f"k{n}" for n in range(5)]
        middleware = limiter(server, DUMP)
        assert middleware.in_flight == 1  # about 10 s of stream are still to come
        responses.cancel()
        wait_until(lambda: middleware.in_flight == 0)


def test_stream_abandoned_through_a_resilient_client_gives_its_slot_back(
    pairing: Pairing,
) -> None:
    # Retry wraps the stream in a generator; closing it must cancel the RPC underneath.
    settings = limited_settings(client_chain=["resilience.middleware.Retry"])
    servicer = ScriptedServicer(dump_items=1000, dump_delay=0.01)
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        responses = stub.Dump(cache_pb2.DumpReq(), timeout=60)
        for n, _item in enumerate(responses):
            if n == 4:
                break
        middleware = limiter(server, DUMP)
        assert middleware.in_flight == 1
        responses.close()
        wait_until(lambda: middleware.in_flight == 0)


@pytest.mark.parametrize("scope", ["server", "method"])
def test_scope_decides_whether_methods_share_the_limit(scope: str, pairing: Pairing) -> None:
    settings = limited_settings(scope=scope, limit=1)
    servicer = ScriptedServicer()
    with pairing.server(settings, servicer) as server, \
            cancellable_client(pairing, settings, server.address) as stub:
        slow = stub.Get.future(cache_pb2.GetReq(key="sleep=30"), timeout=60)
        try:
            wait_until(lambda: servicer.in_flight == 1)
            with pytest.raises(grpc.RpcError) as same_method:
                stub.Get(cache_pb2.GetReq(key="second"), timeout=5)
            assert same_method.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            if scope == "server":
                assert "all methods of this server" in same_method.value.details()
                assert f"({server.address})" in same_method.value.details()
                with pytest.raises(grpc.RpcError) as other_method:
                    stub.Store(cache_pb2.StoreReq(key="store", value=b"v"), timeout=5)
                assert other_method.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert servicer.attempts["store"] == 0
            else:
                assert f"for method {GET}" in same_method.value.details()
                stub.Store(cache_pb2.StoreReq(key="store", value=b"v"), timeout=5)
                assert servicer.attempts["store"] == 1
        finally:
            slow.cancel()
        wait_until(lambda: limiter(server, GET).in_flight == 0)
