"""AdaptiveLimit: how outcomes become samples (fake handlers, both paths), its settings
checks, and real servers in the four pairings: Dump floods are limited, partitions keep
Get's share, and an AIMD limit falls on timeouts and rises again on fast calls."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from apps.cache.protos import cache_pb2, cache_pb2_grpc
from resilience.core.call import Call, CallKind
from resilience.core.errors import RpcStatusError
from resilience.core.middleware import ChainInfo
from resilience.core.options import build_options
from resilience.middleware import AdaptiveLimit
from tests.support.processes import manage
from tests.support.scripted import ScriptedServicer
from tests.support.servers import Pairing, make_settings

pytestmark = pytest.mark.timeout(60)

GET = "cache.CacheService/Get"
DUMP = "cache.CacheService/Dump"
UNARY = CallKind.UNARY_UNARY
STREAM = CallKind.UNARY_STREAM


# --- fake handlers -----------------------------------------------------------------------

def make(handler: Any, kind: CallKind = UNARY, is_async: bool = False,
         shared: dict[str, Any] | None = None, method: str = GET, **options: Any
         ) -> AdaptiveLimit:
    options.setdefault("algorithm", "aimd")
    options.setdefault("params", {"initial_limit": 10, "min_limit": 1, "backoff_ratio": 0.5})
    built, problems = build_options(AdaptiveLimit.Options, options)
    assert built is not None, problems
    info = ChainInfo(method, kind, "client", "AdaptiveLimit",
                     {} if shared is None else shared, "cache:50051", is_async=is_async)
    return AdaptiveLimit(handler, built, info)


def call(kind: CallKind = UNARY) -> Call:
    return Call(GET, kind, "client", "req")


def failing(exc: BaseException) -> Callable[[Call], Any]:
    def handler(_call: Call) -> Any:
        raise exc
    return handler


@pytest.mark.parametrize(("exc", "limit"), [
    (RpcStatusError(grpc.StatusCode.DEADLINE_EXCEEDED), 5),
    (RpcStatusError(grpc.StatusCode.UNAVAILABLE), 5),
    (RpcStatusError(grpc.StatusCode.RESOURCE_EXHAUSTED), 5),
    (RpcStatusError(grpc.StatusCode.CANCELLED), 5),
    (RpcStatusError(grpc.StatusCode.NOT_FOUND), 10),  # an answer: a good sample
    (ValueError("a bug"), 10),  # no sample
])
def test_sync_outcomes_become_samples(exc: BaseException, limit: int) -> None:
    middleware = make(failing(exc))
    with pytest.raises(type(exc)):
        middleware(call())
    assert middleware.limit == limit
    assert middleware.in_flight == 0


def test_sync_unary_success_is_a_good_sample() -> None:
    middleware = make(lambda c: "ok", params={"initial_limit": 1, "min_limit": 1, "max_limit": 5})
    assert middleware(call()) == "ok"
    assert middleware.limit == 2  # AIMD: +1 with the limit fully used
    assert middleware.in_flight == 0


def test_rejection_names_the_limit_and_the_scope() -> None:
    gate = threading.Event()
    middleware = make(lambda c: gate.wait(5), algorithm="fixed", params={"initial_limit": 1},
                      reject_code="UNAVAILABLE")
    worker = threading.Thread(target=middleware, args=(call(),))
    worker.start()
    try:
        deadline = time.monotonic() + 5
        while middleware.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        with pytest.raises(RpcStatusError) as rejected:
            middleware(call())
    finally:
        gate.set()
        worker.join(5)
    assert rejected.value.code() == grpc.StatusCode.UNAVAILABLE
    assert rejected.value.retryable
    assert "adaptive concurrency limit of 1 reached" in rejected.value.details()
    assert "all methods of this channel (cache:50051)" in rejected.value.details()
    assert middleware.in_flight == 0


def test_sync_stream_samples_once_at_its_end_or_drops_when_closed_early() -> None:
    middleware = make(lambda c: iter(range(3)), kind=STREAM)
    assert list(middleware(call(STREAM))) == [0, 1, 2]
    assert (middleware.limit, middleware.in_flight) == (10, 0)  # 2 * 1 < 10: no growth
    stream = middleware(call(STREAM))
    assert middleware.in_flight == 1
    next(stream)
    stream.close()
    assert (middleware.limit, middleware.in_flight) == (5, 0)
    stream = middleware(call(STREAM))
    del stream
    gc.collect()
    assert (middleware.limit, middleware.in_flight) == (2, 0)


def test_sync_stream_failing_midway_is_judged_by_its_status() -> None:
    def responses(_call: Call) -> Iterator[int]:
        yield 1
        raise RpcStatusError(grpc.StatusCode.UNAVAILABLE, "gone")

    middleware = make(responses, kind=STREAM)
    with pytest.raises(RpcStatusError):
        list(middleware(call(STREAM)))
    assert (middleware.limit, middleware.in_flight) == (5, 0)


def test_async_unary_outcomes_and_cancellation() -> None:
    async def scenario() -> None:
        async def slow(_call: Call) -> str:
            await asyncio.sleep(10)
            return "late"

        async def fine(_call: Call) -> str:
            return "ok"

        middleware = make(slow, is_async=True)
        task = asyncio.ensure_future(middleware.acall(call()))
        await asyncio.sleep(0.01)
        assert middleware.in_flight == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (middleware.limit, middleware.in_flight) == (5, 0)

        ok = make(fine, is_async=True, params={"initial_limit": 1, "min_limit": 1, "max_limit": 5})
        assert await ok.acall(call()) == "ok"
        assert ok.limit == 2

    asyncio.run(scenario())


def test_async_stream_end_close_and_failure() -> None:
    async def scenario() -> None:
        async def responses(_call: Call) -> AsyncIterator[int]:
            for n in range(3):
                yield n

        def handler(c: Call) -> AsyncIterator[int]:
            return responses(c)

        middleware = make(handler, kind=STREAM, is_async=True)
        assert [n async for n in middleware.acall(call(STREAM))] == [0, 1, 2]
        assert (middleware.limit, middleware.in_flight) == (10, 0)
        stream = middleware.acall(call(STREAM))
        await anext(stream)
        await stream.aclose()
        assert (middleware.limit, middleware.in_flight) == (5, 0)

    asyncio.run(scenario())


def test_server_scope_shares_one_limiter_and_method_scope_does_not() -> None:
    shared: dict[str, Any] = {}
    get = make(lambda c: "ok", shared=shared)
    dump = make(lambda c: iter(()), kind=STREAM, shared=shared, method=DUMP)
    assert get.limiter is dump.limiter
    alone = make(lambda c: "ok", shared=shared, scope="method")
    assert alone.limiter is not get.limiter


@pytest.mark.parametrize(("options", "message"), [
    ({"algorithm": "vegas", "params": {"bogus": 1}}, "params: unknown option 'bogus'"),
    ({"algorithm": "aimd", "params": {"initial_limit": 0}}, "params: option 'initial_limit'"),
    ({"partitions": {GET: 0.7, DUMP: 0.4}}, "shares sum to 1.1"),
    ({"partitions": {"Get": 0.5}}, "expected a full method name"),
    ({"partitions": {GET: 0}}, "a share of 0"),
    ({"partitions": {GET: 0.5}, "scope": "method"}, "set scope = 'server'"),
    ({"algorithm": "nope"}, "option 'algorithm' is 'nope'"),
    ({"reject_code": "INTERNAL"}, "option 'reject_code'"),
])
def test_bad_options_are_named(options: dict[str, Any], message: str) -> None:
    built, problems = build_options(AdaptiveLimit.Options, options)
    assert built is None
    assert any(message in p for p in problems), problems


def test_defaults_and_every_algorithm_build() -> None:
    built, problems = build_options(AdaptiveLimit.Options, {})
    assert built is not None and not problems
    assert built.algorithm == "gradient2"
    for name in ("fixed", "aimd", "vegas", "gradient2"):
        middleware = make(lambda c: "ok", algorithm=name, params={})
        assert middleware(call()) == "ok"
        assert middleware.limit >= 1


# --- real servers --------------------------------------------------------------------------

class CountingServicer(ScriptedServicer):
    """Counts Dumps in flight on the server (for both servers: the async one reads these
    books): from their start to their last item."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dumps_in_flight = 0
        self.peak_dumps = 0

    def begin_dump(self) -> None:
        super().begin_dump()
        with self.lock:
            self.dumps_in_flight += 1
            self.peak_dumps = max(self.peak_dumps, self.dumps_in_flight)

    def item(self, n: int) -> cache_pb2.DumpItem:  # type: ignore[override]
        if n == self.dump_items - 1:
            with self.lock:
                self.dumps_in_flight -= 1
        return super().item(n)


def settings_with(**options: Any) -> Any:
    return make_settings(
        CLIENT_MIDDLEWARE=[],
        SERVER_MIDDLEWARE=["resilience.middleware.AdaptiveLimit"],
        SERVER_OPTIONS={"AdaptiveLimit": options},
        SERVER_MAX_WORKERS=48,
    )


def limiter_of(server: Any, method: str) -> AdaptiveLimit:
    [middleware] = server.interceptor.middleware[method]
    assert isinstance(middleware, AdaptiveLimit)
    return middleware


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(0.01)


@contextlib.contextmanager
def cancellable_client(pairing: Pairing, settings: Any, address: str) -> Iterator[Any]:
    """Unary calls with ``.future()`` and streams with ``.cancel()``: a plain grpc channel
    for a sync client (the resilient sync channel has no ``future()``), the aio façade
    for an aio client."""
    if pairing.client_mode == "aio":
        with pairing.client(settings, address) as stub:
            yield stub
        return
    with grpc.insecure_channel(address) as channel:
        yield cache_pb2_grpc.CacheServiceStub(channel)


def test_a_flood_of_streaming_dumps_is_limited(pairing: Pairing) -> None:
    settings = settings_with(algorithm="fixed", params={"initial_limit": 5})
    servicer = CountingServicer(dump_items=10, dump_delay=0.05)
    calls = 30
    barrier = threading.Barrier(calls)
    results: list[Any] = [None] * calls
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        assert stub.Get(cache_pb2.GetReq(key="warm"), timeout=5).value == b"warm"

        def one(i: int) -> None:
            barrier.wait(timeout=10)
            try:
                items = list(stub.Dump(cache_pb2.DumpReq(), timeout=20))
            except grpc.RpcError as exc:
                results[i] = (exc.code(), exc.details())
            else:
                results[i] = ("ok", len(items))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(calls)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in threads)

        admitted = [r for r in results if r and r[0] == "ok"]
        rejected = [r for r in results if r and r[0] == grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert len(admitted) + len(rejected) == calls, results
        assert len(admitted) >= 5
        assert len(rejected) >= 10, results
        assert all(n == 10 for _, n in admitted)
        assert "adaptive concurrency limit of 5 reached" in rejected[0][1]
        assert servicer.peak_dumps <= 5
        assert servicer.attempts["dump"] == len(admitted)
        middleware = limiter_of(server, DUMP)
        wait_until(lambda: middleware.in_flight == 0)
        assert middleware.limit == 5


def test_get_keeps_its_share_while_dump_floods(pairing: Pairing) -> None:
    settings = settings_with(algorithm="fixed", params={"initial_limit": 10},
                             partitions={GET: 0.7, DUMP: 0.3})
    servicer = ScriptedServicer(dump_items=2000, dump_delay=0.01)
    with pairing.server(settings, servicer) as server, \
            cancellable_client(pairing, settings, server.address) as stub:
        assert stub.Get(cache_pb2.GetReq(key="warm"), timeout=5).value == b"warm"
        limiter = limiter_of(server, GET).limiter  # chains are built on first use
        # A Dump flood with Get idle borrows the whole limit, and no more.
        streams, rejected = [], 0
        for _ in range(12):
            stream = stub.Dump(cache_pb2.DumpReq(), timeout=60)
            try:
                next(stream)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                rejected += 1
            else:
                streams.append(stream)
        try:
            assert (len(streams), rejected) == (10, 2)
            assert limiter_of(server, DUMP).limiter is limiter
            assert limiter.partition_inflight(DUMP) == 10
            # Get still gets its guaranteed 7 at once.
            gets = [stub.Get.future(cache_pb2.GetReq(key="sleep=1.0"), timeout=30)
                    for _ in range(7)]
            wait_until(lambda: limiter.partition_inflight(GET) == 7)
            # ... but no more, and no Dump gets in while the total is over the limit.
            with pytest.raises(grpc.RpcError) as eighth:
                stub.Get(cache_pb2.GetReq(key="eighth"), timeout=5)
            assert eighth.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            with pytest.raises(grpc.RpcError) as more:
                next(stub.Dump(cache_pb2.DumpReq(), timeout=5))
            assert more.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert [g.result(timeout=10).value for g in gets] == [b"sleep=1.0"] * 7
        finally:
            for stream in streams:
                stream.cancel()
        wait_until(lambda: limiter.inflight == 0)
        assert limiter.partition_inflight(GET) == limiter.partition_inflight(DUMP) == 0


def test_aimd_limit_falls_on_timeouts_and_rises_on_fast_calls(pairing: Pairing) -> None:
    settings = settings_with(
        algorithm="aimd",
        params={"initial_limit": 10, "min_limit": 1, "max_limit": 30, "backoff_ratio": 0.5},
    )
    servicer = ScriptedServicer()
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        assert stub.Get(cache_pb2.GetReq(key="warm"), timeout=5).value == b"warm"
        middleware = limiter_of(server, GET)
        assert middleware.limit == 10
        # Calls that outlive their deadline are drops: 10 -> 5 -> 2 -> 1.
        for _ in range(40):
            if middleware.limit <= 2:
                break
            with pytest.raises(grpc.RpcError) as late:
                stub.Get(cache_pb2.GetReq(key="sleep=2"), timeout=0.1)
            assert late.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED,
                                         grpc.StatusCode.RESOURCE_EXHAUSTED)
            time.sleep(0.05)
        wait_until(lambda: middleware.limit <= 2)
        wait_until(lambda: middleware.in_flight == 0)

        # Fast calls that keep the limit in use raise it again, one per sample.
        stop = threading.Event()

        def busy() -> None:
            while not stop.is_set():
                try:
                    stub.Get(cache_pb2.GetReq(key="sleep=0.02"), timeout=5)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    time.sleep(0.005)

        threads = [threading.Thread(target=busy) for _ in range(8)]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: middleware.limit >= 6, timeout=10)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=10)
        wait_until(lambda: middleware.in_flight == 0)


def test_a_client_side_limit_rejects_locally_and_frees_closed_streams(
    pairing: Pairing,
) -> None:
    settings = make_settings(
        CLIENT_MIDDLEWARE=["resilience.middleware.AdaptiveLimit"],
        CLIENT_OPTIONS={"AdaptiveLimit": {"algorithm": "fixed", "params": {"initial_limit": 1}}},
    )
    servicer = ScriptedServicer(dump_items=1000, dump_delay=0.01)
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        [middleware] = stub.channel.middleware[DUMP]
        assert isinstance(middleware, AdaptiveLimit)
        responses = stub.Dump(cache_pb2.DumpReq(), timeout=60)
        next(responses)
        assert middleware.in_flight == 1
        with pytest.raises(grpc.RpcError) as rejected:
            stub.Get(cache_pb2.GetReq(key="x"), timeout=5)
        assert rejected.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert servicer.attempts["x"] == 0
        responses.close()
        wait_until(lambda: middleware.in_flight == 0)
        assert stub.Get(cache_pb2.GetReq(key="after"), timeout=5).value == b"after"


def test_check_names_a_bad_algorithm_option(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(
        '[default]\nSERVER_MIDDLEWARE = ["resilience.middleware.AdaptiveLimit"]\n'
        '[default.SERVER_OPTIONS.AdaptiveLimit]\nalgorithm = "vegas"\n'
        "params = { initial_limit = 10, smoothingg = 0.5 }\n\n[development]\n"
    )
    result = manage("check", "--settings", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "AdaptiveLimit: params: unknown option 'smoothingg'" in result.stderr
    assert "Traceback" not in result.stderr
