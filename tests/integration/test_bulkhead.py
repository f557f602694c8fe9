"""Bulkhead against real servers: a flood of slow reports (Dump) does not starve fast
updates (Get), and a report stream closed early gives its slot back.

Each test runs in the four pairings of sync and asyncio client and server (the
``pairing`` fixture); the control, which shows the flood does starve Get without the
bulkhead, runs on the sync server only, the one whose threads a flood can exhaust.
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
from resilience.middleware import Bulkhead
from tests.support.scripted import ScriptedServicer
from tests.support.servers import Pairing, client, make_settings, running_server

pytestmark = pytest.mark.timeout(60)

GET = "cache.CacheService/Get"
STORE = "cache.CacheService/Store"
DUMP = "cache.CacheService/Dump"
FLOOD = 50
REPORTS = 10
DUMP_ITEMS = 10
DUMP_DELAY = 0.15  # each Dump takes about 1.5 s
GET_PROMPT_S = 0.5


def bulkhead_settings(max_workers: int = 80) -> Any:
    return make_settings(
        CLIENT_MIDDLEWARE=[],
        SERVER_MIDDLEWARE=["resilience.middleware.Bulkhead"],
        SERVER_OPTIONS={"Bulkhead": {
            "groups": {"reports": [DUMP], "updates": [GET, STORE]},
            "limits": {"reports": REPORTS},
            "max_concurrent": 100,
            "max_wait": 0.2,
            "executor_threads": {"reports": REPORTS},  # the asyncio server ignores it
        }},
        SERVER_MAX_WORKERS=max_workers,
    )


def bulkhead(server: Any, method: str) -> Bulkhead:
    [middleware] = server.interceptor.middleware[method]
    assert isinstance(middleware, Bulkhead)
    return middleware


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(0.01)


class Flood:
    """``FLOOD`` Dump calls started together from threads of their own; each records
    ("ok", items, seconds) or (status code, details, seconds)."""

    def __init__(self, stub: Any) -> None:
        self.results: list[tuple[Any, Any, float]] = []
        self._lock = threading.Lock()
        barrier = threading.Barrier(FLOOD)

        def one() -> None:
            barrier.wait(timeout=10)
            start = time.monotonic()
            try:
                items = sum(1 for _ in stub.Dump(cache_pb2.DumpReq(), timeout=30))
                result: tuple[Any, Any, float] = ("ok", items, time.monotonic() - start)
            except grpc.RpcError as exc:
                result = (exc.code(), exc.details(), time.monotonic() - start)
            with self._lock:
                self.results.append(result)

        self.threads = [threading.Thread(target=one, daemon=True) for _ in range(FLOOD)]
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in self.threads)


def timed_gets(stub: Any, n: int = 10) -> list[float]:
    latencies = []
    for i in range(n):
        start = time.monotonic()
        assert stub.Get(cache_pb2.GetReq(key=f"k{i}"), timeout=10).value == f"k{i}".encode()
        latencies.append(time.monotonic() - start)
    return latencies


def test_slow_reports_in_flight_do_not_block_get(pairing: Pairing) -> None:
    settings = bulkhead_settings()
    servicer = ScriptedServicer(dump_items=DUMP_ITEMS, dump_delay=DUMP_DELAY)
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        # Connect first, so that every timed call below measures the server, not the dial.
        assert stub.Get(cache_pb2.GetReq(key="warm"), timeout=5).value == b"warm"
        flood = Flood(stub)
        wait_until(lambda: servicer.attempts["dump"] >= REPORTS)
        reports = bulkhead(server, DUMP)  # stacks are built on a method's first call
        assert (reports.group, reports.limit) == ("reports", REPORTS)
        assert reports.in_flight == REPORTS

        latencies = timed_gets(stub)
        start = time.monotonic()
        stub.Store(cache_pb2.StoreReq(key="stored", value=b"v"), timeout=10)
        latencies.append(time.monotonic() - start)
        assert reports.in_flight > 0  # the Gets ran while the reports were in flight
        flood.join()

    assert max(latencies) < GET_PROMPT_S, latencies
    assert bulkhead(server, GET).compartment is bulkhead(server, STORE).compartment
    done = [r for r in flood.results if r[0] == "ok"]
    rejected = [r for r in flood.results if r[0] == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert len(done) + len(rejected) == FLOOD, flood.results
    assert REPORTS <= len(done) <= 2 * REPORTS, flood.results
    assert all(items == DUMP_ITEMS for _, items, _ in done)
    for _, details, elapsed in rejected:
        assert details.startswith(f"bulkhead 'reports' is full: {REPORTS} calls in flight")
        assert elapsed < 1.0  # waited max_wait (0.2 s) for a slot, not for a Dump to end
    assert reports.in_flight == 0


def test_without_the_bulkhead_the_flood_starves_get_on_the_sync_server() -> None:
    # The control: the same flood with no bulkhead fills all of grpc's worker threads, so
    # a Get waits for a Dump to end. It shows the test above can fail.
    settings = make_settings(CLIENT_MIDDLEWARE=[], SERVER_MIDDLEWARE=[], SERVER_MAX_WORKERS=FLOOD)
    servicer = ScriptedServicer(dump_items=DUMP_ITEMS, dump_delay=DUMP_DELAY)
    with running_server(settings, servicer) as server, client(settings, server.address) as stub:
        assert stub.Get(cache_pb2.GetReq(key="warm"), timeout=5).value == b"warm"
        flood = Flood(stub)
        wait_until(lambda: servicer.attempts["dump"] == FLOOD)
        [latency] = timed_gets(stub, 1)
        flood.join()
    assert latency > GET_PROMPT_S
    assert [r[0] for r in flood.results] == ["ok"] * FLOOD


@contextlib.contextmanager
def cancellable_client(pairing: Pairing, settings: Any, address: str) -> Iterator[Any]:
    """A stub whose streams have ``.cancel()``: a plain grpc channel's for a sync client,
    the aio façade's for an aio client."""
    if pairing.client_mode == "aio":
        with pairing.client(settings, address) as stub:
            yield stub
        return
    with grpc.insecure_channel(address) as channel:
        yield cache_pb2_grpc.CacheServiceStub(channel)


def test_a_report_cancelled_early_gives_its_slot_back(pairing: Pairing) -> None:
    settings = bulkhead_settings()
    servicer = ScriptedServicer(dump_items=1000, dump_delay=0.01)
    with pairing.server(settings, servicer) as server, \
            cancellable_client(pairing, settings, server.address) as stub:
        responses = stub.Dump(cache_pb2.DumpReq(), timeout=60)
        keys = [item.key for _, item in zip(range(5), responses, strict=False)]
        assert keys == [f"k{n}" for n in range(5)]
        reports = bulkhead(server, DUMP)
        assert reports.in_flight == 1  # about 10 s of stream are still to come
        responses.cancel()
        wait_until(lambda: reports.in_flight == 0)
