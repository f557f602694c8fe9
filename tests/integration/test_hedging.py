"""Hedging against real servers: a slow first attempt is overtaken by a hedge, and the
server sees the losing attempt cancelled ("Every losing hedge is cancelled on the server").

Every test runs in the four pairings of sync and asyncio client and server (the
``pairing`` fixture).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from apps.cache.protos import cache_pb2, cache_pb2_grpc
from tests.support.servers import Pairing, make_settings

pytestmark = pytest.mark.timeout(60)

GET = "cache.CacheService/Get"
SLOW_FIRST = 1.0
CALLS = 3


class Books:
    """What the server saw, per key: attempts, and attempts that ended cancelled."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.attempts: Counter[str] = Counter()
        self.cancelled: Counter[str] = Counter()

    def begin(self, key: str) -> int:
        with self.lock:
            self.attempts[key] += 1
            return self.attempts[key]

    def cancel(self, key: str) -> None:
        with self.lock:
            self.cancelled[key] += 1


class SlowFirstServicer(cache_pb2_grpc.CacheServiceServicer):
    """Sync: the first attempt of each key sleeps ``SLOW_FIRST`` s (until cancelled),
    later ones answer at once."""

    def __init__(self, books: Books) -> None:
        self.books = books

    def Get(self, request: cache_pb2.GetReq, context: grpc.ServicerContext) -> Any:
        key = request.key
        if self.books.begin(key) == 1:
            end = time.monotonic() + SLOW_FIRST
            while time.monotonic() < end:
                if not context.is_active():
                    self.books.cancel(key)
                    break
                time.sleep(0.005)
        return cache_pb2.GetResp(value=key.encode())


class AsyncSlowFirstServicer(cache_pb2_grpc.CacheServiceServicer):
    """Asyncio: the same plan; grpc.aio cancels the handler's task on cancellation."""

    def __init__(self, books: Books) -> None:
        self.books = books

    async def Get(self, request: cache_pb2.GetReq, context: grpc.aio.ServicerContext
                  ) -> Any:
        key = request.key
        if self.books.begin(key) == 1:
            try:
                await asyncio.sleep(SLOW_FIRST)
            except asyncio.CancelledError:
                self.books.cancel(key)
                raise
        return cache_pb2.GetResp(value=key.encode())

    async def Store(self, request: cache_pb2.StoreReq, context: grpc.aio.ServicerContext
                    ) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not used here")

    async def Dump(self, request: cache_pb2.DumpReq, context: grpc.aio.ServicerContext
                   ) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not used here")
        yield  # an async generator, as the asyncio server requires


def servicer_for(pairing: Pairing, books: Books) -> Any:
    return (SlowFirstServicer(books) if pairing.server_mode == "sync"
            else AsyncSlowFirstServicer(books))


def hedging_settings(**options: Any) -> Any:
    return make_settings(
        CLIENT_MIDDLEWARE=["resilience.middleware.Hedging", "resilience.middleware.Timeout"],
        CLIENT_OPTIONS={"Hedging": {"delay": 0.1, **options}, "Timeout": {"seconds": 5.0}},
        SERVER_MIDDLEWARE=[],
        SERVER_MAX_WORKERS=16,
    )


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(0.01)


def test_a_hedge_overtakes_a_slow_first_attempt_which_is_cancelled_on_the_server(
    pairing: Pairing,
) -> None:
    books = Books()
    settings = hedging_settings()
    with pairing.server(settings, servicer_for(pairing, books)) as server, \
            pairing.client(settings, server.address) as stub:
        stub.Get(cache_pb2.GetReq(key="warm-up"), timeout=5)  # connect outside the timing
        keys = [f"k{n}" for n in range(CALLS)]
        for key in keys:
            start = time.monotonic()
            reply = stub.Get(cache_pb2.GetReq(key=key))
            elapsed = time.monotonic() - start
            assert reply.value == key.encode()
            assert elapsed < 0.5, f"{key} took {elapsed:.3f}s"
        wait_until(lambda: all(books.cancelled[k] == 1 for k in keys))
        time.sleep(0.2)  # a third attempt would have gone 0.1 s after the second
        assert {k: books.attempts[k] for k in keys} == dict.fromkeys(keys, 2)


def test_with_call_returns_the_winning_attempts_call(pairing: Pairing) -> None:
    if pairing.client_mode == "aio":
        pytest.skip("with_call is the sync client's")
    books = Books()
    settings = hedging_settings()
    with pairing.server(settings, servicer_for(pairing, books)) as server, \
            pairing.client(settings, server.address) as stub:
        reply, call = stub.Get.with_call(cache_pb2.GetReq(key="wc"), timeout=5)
        assert reply.value == b"wc"
        assert call.code() == grpc.StatusCode.OK
        wait_until(lambda: books.cancelled["wc"] == 1)


def test_without_hedging_the_slow_attempt_is_waited_for(pairing: Pairing) -> None:
    """The control: the same server and client with max_attempts = 1 take the full second."""
    books = Books()
    settings = hedging_settings(max_attempts=1)
    with pairing.server(settings, servicer_for(pairing, books)) as server, \
            pairing.client(settings, server.address) as stub:
        start = time.monotonic()
        stub.Get(cache_pb2.GetReq(key="slow"))
        assert time.monotonic() - start >= SLOW_FIRST * 0.9
        assert books.attempts["slow"] == 1
        assert books.cancelled["slow"] == 0
