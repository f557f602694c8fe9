"""No event-loop blocking: while one call waits in a slow middleware path, other calls on
the same asyncio server or asyncio channel go on, on either side of the wire.

One call is parked in a middleware that takes 1 s for keys starting with "slow" (awaiting
``asyncio.sleep``, or a sync-only ``time.sleep`` that the framework moves to a worker
thread). Then 20 fast calls are made at once; they must all be answered in well under the
1 s, and before the slow call is. The observer runs outside the loop under test (a sync
grpc channel, or the test thread driving the aio façade), so a stalled loop cannot pause
the stopwatch. A control with a middleware that does block the loop shows the stall is
seen.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest

from apps.cache.protos import cache_pb2, cache_pb2_grpc
from tests.support.scripted import ScriptedServicer
from tests.support.servers import client, make_settings, running_server
from tests.support.slow import SLOW_SECONDS

pytestmark = pytest.mark.timeout(60)

GET = "cache.CacheService/Get"
FAST_CALLS = 20
BUDGET = 0.5  # seconds for all the fast calls together; a stall costs SLOW_SECONDS

NON_BLOCKING = [
    pytest.param("tests.support.slow.AsyncSlow", id="async-middleware"),
    pytest.param("tests.support.slow.SyncOnlySlow", id="sync-only-middleware"),
]
BLOCKING = "tests.support.slow.LoopBlockingSlow"


def fast_calls_beside_a_slow_one(stub: Any, chains: dict[str, list[Any]]) -> tuple[float, bool]:
    """Park one slow call in the slow middleware of Get's chain (in ``chains``, a channel's
    or an interceptor's ``middleware``), then make FAST_CALLS calls at once.

    Returns how long the fast calls took in all, and whether the slow call was still in
    flight when they were all answered. ``stub.Get.future`` must not run on the loop under
    test (a sync grpc channel's future, or the aio façade's).
    """
    # A server builds a method's stack on its first call.
    assert stub.Get(cache_pb2.GetReq(key="warm"), timeout=5).value == b"warm"
    [middleware] = chains[GET]
    slow = stub.Get.future(cache_pb2.GetReq(key="slow"), timeout=10)
    assert middleware.slow_started.wait(timeout=5), "the slow call never reached the middleware"
    start = time.monotonic()
    fast = [stub.Get.future(cache_pb2.GetReq(key=f"fast{n}"), timeout=10)
            for n in range(FAST_CALLS)]
    values = [future.result(timeout=10).value for future in fast]
    elapsed = time.monotonic() - start
    slow_in_flight = not slow.done()
    assert values == [f"fast{n}".encode() for n in range(FAST_CALLS)]
    assert slow.result(timeout=10).value == b"slow"
    return elapsed, slow_in_flight


def serve_with(path: str) -> tuple[Any, ScriptedServicer]:
    return make_settings(SERVER_MIDDLEWARE=[path], CLIENT_MIDDLEWARE=[]), ScriptedServicer()


@pytest.mark.parametrize("path", NON_BLOCKING)
def test_slow_server_middleware_does_not_stall_other_calls(path: str) -> None:
    settings, servicer = serve_with(path)
    with running_server(settings, servicer, mode="aio") as server, \
            grpc.insecure_channel(server.address) as channel:
        stub = cache_pb2_grpc.CacheServiceStub(channel)
        elapsed, slow_in_flight = fast_calls_beside_a_slow_one(
            stub, server.interceptor.middleware
        )
    assert elapsed < BUDGET, f"{FAST_CALLS} fast calls took {elapsed:.3f}s"
    assert slow_in_flight
    assert servicer.attempts["slow"] == 1
    assert servicer.peak_in_flight >= 1


@pytest.mark.parametrize("path", NON_BLOCKING)
def test_slow_client_middleware_does_not_stall_other_calls(path: str) -> None:
    settings = make_settings(CLIENT_MIDDLEWARE=[path])
    with running_server(settings, ScriptedServicer()) as server, \
            client(settings, server.address, mode="aio") as stub:
        elapsed, slow_in_flight = fast_calls_beside_a_slow_one(
            stub, stub.channel.middleware
        )
    assert elapsed < BUDGET, f"{FAST_CALLS} fast calls took {elapsed:.3f}s"
    assert slow_in_flight


@pytest.mark.parametrize("side", ["server", "client"])
def test_control_a_middleware_that_blocks_the_loop_does_stall_them(side: str) -> None:
    """The measurement above can fail: a loop-blocking middleware holds the fast calls
    back for about its whole sleep."""
    if side == "server":
        settings, servicer = serve_with(BLOCKING)
        with running_server(settings, servicer, mode="aio") as server, \
                grpc.insecure_channel(server.address) as channel:
            elapsed, _ = fast_calls_beside_a_slow_one(
                cache_pb2_grpc.CacheServiceStub(channel),
                server.interceptor.middleware,
            )
    else:
        settings = make_settings(CLIENT_MIDDLEWARE=[BLOCKING])
        with running_server(settings, ScriptedServicer()) as server, \
                client(settings, server.address, mode="aio") as stub:
            elapsed, _ = fast_calls_beside_a_slow_one(
                stub, stub.channel.middleware
            )
    assert elapsed > SLOW_SECONDS / 2


def test_many_calls_can_be_inside_a_sync_only_middleware_at_once() -> None:
    """The adapter holds a thread per call until the layers below answer; its own pool is
    large enough that 16 slow calls run side by side instead of a handful at a time."""
    calls = 16
    settings = make_settings(SERVER_MIDDLEWARE=["tests.support.modes.SyncOnly"],
                             SERVER_MAX_WORKERS=32)
    servicer = ScriptedServicer()
    with running_server(settings, servicer, mode="aio") as server:
        channel = grpc.insecure_channel(server.address)
        stub = cache_pb2_grpc.CacheServiceStub(channel)
        try:
            start = time.monotonic()
            futures = [stub.Get.future(cache_pb2.GetReq(key="sleep=1.0"), timeout=20)
                       for _ in range(calls)]
            for future in futures:
                future.result(timeout=20)
            elapsed = time.monotonic() - start
        finally:
            channel.close()
    assert servicer.peak_in_flight == calls
    assert elapsed < 4.0, f"{calls} one-second calls took {elapsed:.1f}s"
