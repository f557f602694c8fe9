"""Health on real servers in both modes: NOT_SERVING while draining, and, with
HEALTH_SATURATION_SECONDS, NOT_SERVING while the concurrency limit stays full."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from apps.cache.protos import cache_pb2
from resilience.conf.settings import Settings
from resilience.transport.serving import Server
from tests.support.aio_facade import SyncAioServer
from tests.support.scripted import ScriptedServicer
from tests.support.servers import client, make_settings, scripted_apps

pytestmark = pytest.mark.timeout(60)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
MODES = pytest.mark.parametrize("mode", ["sync", "aio"])
SATURATION_S = 0.4
LIMITED: dict[str, Any] = {
    "SERVER_MIDDLEWARE": ["resilience.middleware.ConcurrencyLimit"],
    "SERVER_OPTIONS": {"ConcurrencyLimit": {"max_in_flight": 2}},
}


def start(settings: Settings, servicer: Any, mode: str) -> Server | SyncAioServer:
    """A started server; the test stops it (with the grace it wants)."""
    if mode == "aio":
        return SyncAioServer(settings, scripted_apps(servicer), "127.0.0.1:0")
    server = Server(settings, scripted_apps(servicer), "127.0.0.1:0")
    server.start()
    return server


@contextlib.contextmanager
def health(address: str) -> Iterator[Callable[[], int]]:
    """``check()``: the server's ("") status now."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        yield lambda: stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def wait_for(check: Callable[[], int], status: int, timeout: float) -> float:
    """Poll until ``check()`` says ``status``; return when it did (monotonic), or fail."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check() == status:
            return time.monotonic()
        time.sleep(0.02)
    raise AssertionError(f"health did not become {status} within {timeout} s")


def fill(address: str, seconds: float, count: int = 2) -> list[threading.Thread]:
    """``count`` calls that each hold a slot for ``seconds``, each from its own thread (on
    a client without middleware, so that no client timeout ends them first)."""
    settings = make_settings(CLIENT_MIDDLEWARE=[])

    def one() -> None:
        with client(settings, address) as stub:
            stub.Get(cache_pb2.GetReq(key=f"sleep={seconds}"), timeout=seconds + 10)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def wait_in_flight(servicer: ScriptedServicer, count: int) -> float:
    end = time.monotonic() + 10
    while servicer.in_flight < count:
        assert time.monotonic() < end, "the calls never reached the servicer"
        time.sleep(0.005)
    return time.monotonic()


@MODES
def test_not_serving_while_the_limit_stays_full_then_serving_again(mode: str) -> None:
    settings = make_settings(HEALTH_SATURATION_SECONDS=SATURATION_S, **LIMITED)
    servicer = ScriptedServicer()
    server = start(settings, servicer, mode)
    try:
        with health(server.address) as check:
            assert check() == SERVING
            threads = fill(server.address, seconds=1.2)
            full_at = wait_in_flight(servicer, 2)
            limiters = (server.server if mode == "aio" else server).limiters()
            assert [(m.in_flight, m.limit) for m in limiters] == [(2, 2)]
            reported_at = wait_for(check, NOT_SERVING, timeout=SATURATION_S + 1.5)
            assert reported_at - full_at >= SATURATION_S - 0.1  # not at the first full sample
            for thread in threads:
                thread.join(timeout=10)
            wait_for(check, SERVING, timeout=2.0)
    finally:
        server.stop(grace=0)


@MODES
def test_saturation_is_ignored_when_off(mode: str) -> None:
    settings = make_settings(**LIMITED)  # HEALTH_SATURATION_SECONDS = 0
    servicer = ScriptedServicer()
    server = start(settings, servicer, mode)
    try:
        assert (server.server if mode == "aio" else server).saturation is None
        with health(server.address) as check:
            threads = fill(server.address, seconds=1.0)
            wait_in_flight(servicer, 2)
            end = time.monotonic() + 0.6
            while time.monotonic() < end:
                assert check() == SERVING
                time.sleep(0.05)
            for thread in threads:
                thread.join(timeout=10)
    finally:
        server.stop(grace=0)


@MODES
def test_not_serving_while_draining(mode: str) -> None:
    """Stopping reports NOT_SERVING while calls are still in flight, and nothing (the
    saturation monitor is on here, with the limit not full) turns it back to SERVING."""
    settings = make_settings(HEALTH_SATURATION_SECONDS=0.05, **LIMITED)
    servicer = ScriptedServicer()
    server = start(settings, servicer, mode)
    statuses: queue.Queue[Any] = queue.Queue()

    def watch() -> None:
        with grpc.insecure_channel(server.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                for reply in stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=20):
                    statuses.put(reply.status)
            except grpc.RpcError as exc:
                statuses.put(exc.code())
        statuses.put(None)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert statuses.get(timeout=10) == SERVING
    threads = fill(server.address, seconds=0.6, count=1)
    wait_in_flight(servicer, 1)
    # The open Watch is in flight too, so stopping takes the whole grace period.
    stopper = threading.Thread(target=server.stop, kwargs={"grace": 1.0}, daemon=True)
    stopper.start()
    assert statuses.get(timeout=5) == NOT_SERVING
    assert servicer.in_flight == 1  # drained while the call still runs
    for thread in threads:
        thread.join(timeout=10)
    stopper.join(timeout=15)
    assert not stopper.is_alive()
    seen = []
    while (item := statuses.get(timeout=10)) is not None:
        seen.append(item)
    assert SERVING not in seen, seen
