"""What a stub returns through a chain is grpcio's object for the logical call: started when
the stub is called, with the metadata and status of the attempt that decided the outcome,
and cancellable on the wire. Real servers, real channels, both server kinds."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import grpc.aio
import pytest

from apps.cache.protos import cache_pb2, cache_pb2_grpc
from resilience.transport.aio_client import aio_connect
from resilience.transport.client import connect
from tests.support.servers import MODES, Mode, make_settings, running_server

ATTEMPTS = {"max_attempts": 3, "initial_backoff": 0.01, "max_backoff": 0.02}


def settings_with(*middleware: str, **options: Any) -> Any:
    return make_settings(
        CLIENT_MIDDLEWARE=[f"resilience.middleware.{name}" for name in middleware],
        CLIENT_OPTIONS=options,
        SERVER_MIDDLEWARE=[],
    )


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(0.005)


class Books:
    """Attempts per key, and Gets in flight, shared by the sync and asyncio servicers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.attempts: Counter[str] = Counter()
        self.in_flight = 0

    def begin(self, key: str) -> int:
        with self.lock:
            self.attempts[key] += 1
            self.in_flight += 1
            return self.attempts[key]

    def end(self) -> None:
        with self.lock:
            self.in_flight -= 1


def _tags(n: int) -> tuple[tuple[str, str], ...]:
    return (("attempt", str(n)),)


class MetadataServicer(cache_pb2_grpc.CacheServiceServicer):
    """Every attempt sends its number as initial and trailing metadata. Keys: ``fail1...``
    fails the first attempt with UNAVAILABLE; ``slow1`` makes the first attempt take 2 s;
    ``sleep`` sleeps until cancelled (at most 10 s); Dump with key-less requests fails its
    first attempt before any item when the servicer was made with ``dump_fails_once``."""

    def __init__(self, books: Books, dump_fails_once: bool = False) -> None:
        self.books = books
        self.dump_fails_once = dump_fails_once

    def Get(self, request: Any, context: grpc.ServicerContext) -> Any:
        n = self.books.begin(request.key)
        try:
            context.send_initial_metadata(_tags(n))
            context.set_trailing_metadata(_tags(n))
            if request.key.startswith("fail1") and n == 1:
                context.abort(grpc.StatusCode.UNAVAILABLE, "first attempt fails")
            pause = {"slow1": 2.0 if n == 1 else 0.0, "sleep": 10.0}.get(request.key, 0.0)
            end = time.monotonic() + pause
            while time.monotonic() < end and context.is_active():
                time.sleep(0.005)
            return cache_pb2.GetResp(value=request.key.encode())
        finally:
            self.books.end()

    def Dump(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        n = self.books.begin("dump")
        try:
            context.send_initial_metadata(_tags(n))
            context.set_trailing_metadata(_tags(n))
            if self.dump_fails_once and n == 1:
                context.abort(grpc.StatusCode.UNAVAILABLE, "first attempt fails")
            for i in range(3):
                yield cache_pb2.DumpItem(key=f"k{i}", val=b"v")
            end = time.monotonic() + (10.0 if not self.dump_fails_once else 0.0)
            while time.monotonic() < end and context.is_active():
                time.sleep(0.005)
        finally:
            self.books.end()


class AsyncMetadataServicer(cache_pb2_grpc.CacheServiceServicer):
    """``MetadataServicer`` for the asyncio server, on the same books."""

    def __init__(self, books: Books, dump_fails_once: bool = False) -> None:
        self.books = books
        self.dump_fails_once = dump_fails_once

    async def Get(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        n = self.books.begin(request.key)
        try:
            await context.send_initial_metadata(_tags(n))
            context.set_trailing_metadata(_tags(n))
            if request.key.startswith("fail1") and n == 1:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "first attempt fails")
            pause = {"slow1": 2.0 if n == 1 else 0.0, "sleep": 10.0}.get(request.key, 0.0)
            await asyncio.sleep(pause)
            return cache_pb2.GetResp(value=request.key.encode())
        finally:
            self.books.end()

    async def Store(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return cache_pb2.StoreResp()

    async def Dump(self, request: Any, context: grpc.aio.ServicerContext
                   ) -> AsyncIterator[Any]:
        n = self.books.begin("dump")
        try:
            await context.send_initial_metadata(_tags(n))
            context.set_trailing_metadata(_tags(n))
            if self.dump_fails_once and n == 1:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "first attempt fails")
            for i in range(3):
                yield cache_pb2.DumpItem(key=f"k{i}", val=b"v")
            await asyncio.sleep(0.0 if self.dump_fails_once else 10.0)
        finally:
            self.books.end()


def serving(settings: Any, mode: Mode, books: Books, **kwargs: Any) -> Any:
    servicer = MetadataServicer(books, **kwargs) if mode == "sync" else (
        AsyncMetadataServicer(books, **kwargs)
    )
    return running_server(settings, servicer, mode=mode)


def attempt_of(metadata: Any) -> str:
    return dict(metadata)["attempt"]


# --- sync client ------------------------------------------------------------------------


@pytest.mark.parametrize("server_mode", MODES)
def test_future_runs_the_whole_chain_and_reports_the_deciding_attempt(
    server_mode: Mode,
) -> None:
    settings = settings_with("Retry", Retry=ATTEMPTS)
    books = Books()
    with serving(settings, server_mode, books) as server, \
            connect(server.address, settings) as channel:
        future = cache_pb2_grpc.CacheServiceStub(channel).Get.future(
            cache_pb2.GetReq(key="fail1"), timeout=5)
        assert isinstance(future, grpc.Future) and isinstance(future, grpc.Call)
        assert future.result(timeout=5).value == b"fail1"
        assert books.attempts["fail1"] == 2
        assert future.code() is grpc.StatusCode.OK
        assert attempt_of(future.initial_metadata()) == "2"
        assert attempt_of(future.trailing_metadata()) == "2"
        assert future.done() and not future.cancelled() and not future.is_active()


@pytest.mark.parametrize("server_mode", MODES)
def test_cancelling_a_future_cancels_the_attempt_and_starts_no_more(server_mode: Mode) -> None:
    # CANCELLED is retryable here on purpose: only the cancel scope stops a new attempt.
    settings = settings_with(
        "Retry", Retry={**ATTEMPTS, "retryable_codes": ["UNAVAILABLE", "CANCELLED"]})
    books = Books()
    with serving(settings, server_mode, books) as server, \
            connect(server.address, settings) as channel:
        future = cache_pb2_grpc.CacheServiceStub(channel).Get.future(
            cache_pb2.GetReq(key="sleep"), timeout=20)
        wait_until(lambda: books.in_flight == 1)
        assert future.cancel()
        assert future.cancelled() and future.done()
        with pytest.raises(grpc.FutureCancelledError):
            future.result()
        assert future.code() is grpc.StatusCode.CANCELLED
        wait_until(lambda: books.in_flight == 0)  # the server saw the cancellation
        [retry] = channel.middleware["cache.CacheService/Get"]
        wait_until(lambda: future._future.done())  # the chain's thread has finished
        assert retry.retries == 0
        assert books.attempts["sleep"] == 1


@pytest.mark.parametrize("server_mode", MODES)
def test_a_sync_stream_starts_when_the_stub_is_called(server_mode: Mode) -> None:
    settings = settings_with("Retry", "Timeout", "CircuitBreaker", Timeout={"seconds": 30})
    books = Books()
    with serving(settings, server_mode, books) as server, \
            connect(server.address, settings) as channel:
        responses = cache_pb2_grpc.CacheServiceStub(channel).Dump(cache_pb2.DumpReq())
        wait_until(lambda: books.attempts["dump"] == 1)  # before any next()
        assert isinstance(responses, grpc.Call)
        assert next(responses).key == "k0"
        assert responses.is_active()
        assert 0 < responses.time_remaining() <= 30
        assert attempt_of(responses.initial_metadata()) == "1"
        assert responses.cancel()
        with pytest.raises(grpc.RpcError) as ended:
            list(responses)
        assert ended.value.code() is grpc.StatusCode.CANCELLED
        assert responses.code() is grpc.StatusCode.CANCELLED
        assert not responses.is_active()
        wait_until(lambda: books.in_flight == 0)


@pytest.mark.parametrize("server_mode", MODES)
def test_a_retried_stream_reports_the_attempt_that_answered(server_mode: Mode) -> None:
    settings = settings_with("Retry", Retry=ATTEMPTS)
    books = Books()
    with serving(settings, server_mode, books, dump_fails_once=True) as server, \
            connect(server.address, settings) as channel:
        responses = cache_pb2_grpc.CacheServiceStub(channel).Dump(cache_pb2.DumpReq(),
                                                                  timeout=5)
        assert [item.key for item in responses] == ["k0", "k1", "k2"]
        assert books.attempts["dump"] == 2
        assert responses.code() is grpc.StatusCode.OK
        assert attempt_of(responses.initial_metadata()) == "2"
        assert attempt_of(responses.trailing_metadata()) == "2"


def test_a_stream_refused_by_an_open_breaker_knows_its_status_before_it_is_read() -> None:
    settings = settings_with("CircuitBreaker", CircuitBreaker={"fail_max": 1})
    with connect("127.0.0.1:1", settings) as channel:  # nothing listens there
        stub = cache_pb2_grpc.CacheServiceStub(channel)
        with pytest.raises(grpc.RpcError):
            stub.Get(cache_pb2.GetReq(key="x"), timeout=2)
        responses = stub.Dump(cache_pb2.DumpReq(), timeout=2)
        with pytest.raises(grpc.RpcError):
            list(responses)  # Dump's own breaker opens on this failure
        refused = stub.Dump(cache_pb2.DumpReq(), timeout=2)
        assert refused.code() is grpc.StatusCode.UNAVAILABLE
        assert "circuit breaker" in refused.details()
        assert not refused.is_active()
        with pytest.raises(grpc.RpcError) as raised:
            next(refused)
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("server_mode", MODES)
def test_with_call_reports_the_hedge_that_won(server_mode: Mode) -> None:
    settings = settings_with("Hedging", Hedging={"delay": 0.05, "max_attempts": 2})
    books = Books()
    with serving(settings, server_mode, books) as server, \
            connect(server.address, settings) as channel:
        response, call = cache_pb2_grpc.CacheServiceStub(channel).Get.with_call(
            cache_pb2.GetReq(key="slow1"), timeout=5)
        assert response.value == b"slow1"
        assert attempt_of(call.initial_metadata()) == "2"
        assert call.code() is grpc.StatusCode.OK


# --- asyncio client ---------------------------------------------------------------------


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        await asyncio.sleep(0.005)


def run_aio(server_mode: Mode, books: Books, settings: Any,
            body: Callable[[Any, Any], Any], **kwargs: Any) -> None:
    with serving(settings, server_mode, books, **kwargs) as server:
        async def main() -> None:
            channel = aio_connect(server.address, settings)
            try:
                await body(cache_pb2_grpc.CacheServiceStub(channel), channel)
            finally:
                await channel.close()

        asyncio.run(main())


@pytest.mark.parametrize("server_mode", MODES)
def test_an_aio_unary_call_starts_unawaited_and_reports_the_deciding_attempt(
    server_mode: Mode,
) -> None:
    settings = settings_with("Metrics", "Retry", "Timeout", "CircuitBreaker", Retry=ATTEMPTS)
    books = Books()

    async def body(stub: Any, channel: Any) -> None:
        call = stub.Get(cache_pb2.GetReq(key="fail1"), timeout=5)
        assert isinstance(call, grpc.aio.UnaryUnaryCall)
        await _until(lambda: books.attempts["fail1"] == 1)  # never awaited so far
        assert (await call).value == b"fail1"
        assert books.attempts["fail1"] == 2
        assert await call.code() is grpc.StatusCode.OK
        assert attempt_of(await call.initial_metadata()) == "2"
        assert attempt_of(await call.trailing_metadata()) == "2"
        assert call.done() and not call.cancelled()
        unawaited = stub.Get(cache_pb2.GetReq(key="fail1-b"), timeout=5)
        assert (await unawaited.code()) is grpc.StatusCode.OK  # steps itself, retry included
        assert books.attempts["fail1-b"] == 2
        seen: list[Any] = []
        call.add_done_callback(seen.append)
        await asyncio.sleep(0)
        assert seen == [call]

    run_aio(server_mode, books, settings, body)


@pytest.mark.parametrize("server_mode", MODES)
def test_cancelling_an_aio_unary_call_cancels_the_rpc(server_mode: Mode) -> None:
    settings = settings_with("Metrics", "Retry", "Timeout", "CircuitBreaker",
                             Timeout={"seconds": 30})
    books = Books()

    async def body(stub: Any, channel: Any) -> None:
        call = stub.Get(cache_pb2.GetReq(key="sleep"))
        await _until(lambda: books.in_flight == 1)
        assert call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert call.cancelled()
        assert await call.code() is grpc.StatusCode.CANCELLED
        await _until(lambda: books.in_flight == 0)

    run_aio(server_mode, books, settings, body)


@pytest.mark.parametrize("server_mode", MODES)
def test_an_aio_stream_reads_and_cancels_like_grpc_aio(server_mode: Mode) -> None:
    settings = settings_with("Metrics", "Retry", "Timeout", "CircuitBreaker",
                             Timeout={"seconds": 30})
    books = Books()

    async def body(stub: Any, channel: Any) -> None:
        call = stub.Dump(cache_pb2.DumpReq())
        assert isinstance(call, grpc.aio.UnaryStreamCall)
        await _until(lambda: books.attempts["dump"] == 1)  # before any read
        assert (await call.read()).key == "k0"
        assert attempt_of(await call.initial_metadata()) == "1"
        assert call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call.read()
        assert call.cancelled()
        assert await call.code() is grpc.StatusCode.CANCELLED
        await _until(lambda: books.in_flight == 0)

    run_aio(server_mode, books, settings, body)


@pytest.mark.parametrize("server_mode", MODES)
def test_a_retried_aio_stream_reports_the_attempt_that_answered(server_mode: Mode) -> None:
    settings = settings_with("Metrics", "Retry", Retry=ATTEMPTS)
    books = Books()

    async def body(stub: Any, channel: Any) -> None:
        call = stub.Dump(cache_pb2.DumpReq(), timeout=5)
        assert [item.key async for item in call] == ["k0", "k1", "k2"]
        assert await call.read() is grpc.aio.EOF
        assert books.attempts["dump"] == 2
        assert await call.code() is grpc.StatusCode.OK
        assert attempt_of(await call.initial_metadata()) == "2"
        assert call.done()

    run_aio(server_mode, books, settings, body, dump_fails_once=True)


@pytest.mark.parametrize("server_mode", MODES)
def test_an_aio_hedge_that_wins_is_the_call_reported(server_mode: Mode) -> None:
    settings = settings_with("Hedging", Hedging={"delay": 0.05, "max_attempts": 2})
    books = Books()

    async def body(stub: Any, channel: Any) -> None:
        call = stub.Get(cache_pb2.GetReq(key="slow1"), timeout=5)
        assert (await call).value == b"slow1"
        assert attempt_of(await call.initial_metadata()) == "2"

    run_aio(server_mode, books, settings, body)


def test_aio_local_rejections_are_aio_rpc_errors_with_their_status() -> None:
    settings = settings_with("CircuitBreaker", CircuitBreaker={"fail_max": 1})

    async def main() -> None:
        channel = aio_connect("127.0.0.1:1", settings)
        try:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Get(cache_pb2.GetReq(key="x"), timeout=2)
            call = stub.Get(cache_pb2.GetReq(key="x"), timeout=2)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "circuit breaker" in refused.value.details()
            assert await call.code() is grpc.StatusCode.UNAVAILABLE
        finally:
            await channel.close()

    asyncio.run(main())
