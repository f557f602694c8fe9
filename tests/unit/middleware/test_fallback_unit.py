"""Fallback against fake handlers (sync and asyncio), its options, and the cache app's
example fallback (``apps.cache.fallbacks``): a bounded LRU of last values seen."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from apps.cache import fallbacks
from apps.cache.protos import cache_pb2
from resilience.core.call import Call, CallKind
from resilience.core.chain import MiddlewareSpec, build_chain
from resilience.core.errors import RpcStatusError
from resilience.core.middleware import ChainInfo
from resilience.core.options import build_options
from resilience.middleware import CircuitBreaker, Fallback

METHOD = "cache.CacheService/Get"
UNARY = CallKind.UNARY_UNARY
STREAM = CallKind.UNARY_STREAM
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
HERE = __name__

#: (request, error) for every call of ``answer``; responses seen by ``record``.
received: list[tuple[Any, BaseException]] = []
observed: list[tuple[Any, Any]] = []
NOT_CALLABLE = 42


def answer(request: Any, error: BaseException) -> Any:
    received.append((request, error))
    return ("fallback", request)


def answer_stream(request: Any, error: BaseException) -> list[str]:
    received.append((request, error))
    return ["f1", "f2"]


async def answer_async(request: Any, error: BaseException) -> Any:
    await asyncio.sleep(0)
    received.append((request, error))
    return ("async fallback", request)


async def answer_async_stream(request: Any, error: BaseException) -> AsyncIterator[str]:
    received.append((request, error))
    for item in ("a1", "a2"):
        await asyncio.sleep(0)
        yield item


def record(request: Any, response: Any) -> None:
    observed.append((request, response))


def broken_observer(request: Any, response: Any) -> None:
    raise RuntimeError("observer bug")


@pytest.fixture(autouse=True)
def _clear() -> Iterator[None]:
    received.clear()
    observed.clear()
    fallbacks.last_values.clear()
    yield
    received.clear()
    observed.clear()
    fallbacks.last_values.clear()


def make(handler: Any, kind: CallKind = UNARY, is_async: bool = False, **options: Any) -> Any:
    options.setdefault("function", f"{HERE}.answer")
    info = ChainInfo(METHOD, kind, "client", "Fallback", {}, is_async=is_async)
    return Fallback(handler, Fallback.Options(**options), info)


def make_call(request: Any = "req", kind: CallKind = UNARY) -> Call:
    return Call(METHOD, kind, "client", request)


class Backend:
    """A sync terminal failing with ``code`` (or answering ``"resp"`` when it is None)."""

    def __init__(self, code: grpc.StatusCode | None = None) -> None:
        self.code = code
        self.calls = 0

    def __call__(self, call: Call) -> Any:
        self.calls += 1
        if self.code is not None:
            raise RpcStatusError(self.code, "boom")
        return "resp"


# --- options -------------------------------------------------------------------------


def test_defaults_and_required_function() -> None:
    options = Fallback.Options(function=f"{HERE}.answer")
    assert options.codes == {
        UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED
    }
    assert options.on_breaker_open is True
    assert options.observe == ""
    _, problems = build_options(Fallback.Options, {})
    assert problems == [
        "option 'function' is not set; expected the dotted path of a function "
        "fn(request, error) -> response, such as 'apps.cache.fallbacks.last_value'"
    ]


def test_function_and_observe_must_import_and_be_callable() -> None:
    _, problems = build_options(
        Fallback.Options, {"function": "tests.nowhere.answer", "observe": f"{HERE}.NOT_CALLABLE"}
    )
    assert len(problems) == 2
    assert "option 'function' is 'tests.nowhere.answer'" in problems[0]
    assert "no module named 'tests.nowhere'" in problems[0]
    assert "option 'observe'" in problems[1]
    assert "is a int, not a function" in problems[1]
    options, problems = build_options(
        Fallback.Options,
        {"function": "apps.cache.fallbacks.last_value", "observe": "apps.cache.fallbacks.observe",
         "codes": ["unavailable"], "on_breaker_open": False},
    )
    assert problems == []
    assert options is not None and options.codes == {UNAVAILABLE}


# --- sync path -----------------------------------------------------------------------


def test_passes_ok_through_and_observes_it() -> None:
    mw = make(Backend(), observe=f"{HERE}.record")
    with capture_logs() as logs:
        assert mw(make_call()) == "resp"
    assert observed == [("req", "resp")]
    assert received == []
    assert logs == []


@pytest.mark.parametrize("code", [
    grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL,
    grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN,
])
def test_other_codes_pass_through_unchanged(code: grpc.StatusCode) -> None:
    mw = make(Backend(code))
    with capture_logs() as logs, pytest.raises(RpcStatusError) as info:
        mw(make_call())
    assert info.value.code() == code
    assert info.value.details() == "boom"
    assert received == []
    assert logs == []


@pytest.mark.parametrize("code", [
    UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
])
def test_serves_configured_codes_and_logs_it(code: grpc.StatusCode) -> None:
    mw = make(Backend(code))
    with capture_logs() as logs:
        assert mw(make_call("r1")) == ("fallback", "r1")
    [(request, error)] = received
    assert request == "r1"
    assert error.code() == code
    assert logs == [{"event": "fallback_served", "method": METHOD, "code": code.name,
                     "log_level": "warning"}]


def test_codes_option_is_honoured() -> None:
    mw = make(Backend(grpc.StatusCode.NOT_FOUND), codes=frozenset({grpc.StatusCode.NOT_FOUND}))
    assert mw(make_call()) == ("fallback", "req")
    mw = make(Backend(UNAVAILABLE), codes=frozenset({grpc.StatusCode.NOT_FOUND}))
    with pytest.raises(RpcStatusError):
        mw(make_call())


def test_non_grpc_errors_pass_through() -> None:
    def buggy(call: Call) -> Any:
        raise ValueError("a bug, not a status")

    with pytest.raises(ValueError):
        make(buggy, codes=frozenset({grpc.StatusCode.UNKNOWN}))(make_call())
    assert received == []


def test_a_function_that_re_raises_serves_nothing() -> None:
    mw = make(Backend(UNAVAILABLE), function="apps.cache.fallbacks.last_value")
    with capture_logs() as logs, pytest.raises(RpcStatusError) as info:
        mw(make_call(cache_pb2.GetReq(key="never-seen")))
    assert info.value.details() == "boom"
    assert logs == []


def test_a_failing_observer_never_fails_the_call() -> None:
    mw = make(Backend(), observe=f"{HERE}.broken_observer")
    with capture_logs() as logs:
        assert mw(make_call()) == "resp"
    assert [entry["event"] for entry in logs] == ["fallback_observe_failed"]


def breaker_chain(terminal: Any, is_async: bool = False, **fallback: Any) -> tuple[Any, Any]:
    """[Fallback, CircuitBreaker] over ``terminal``, built by the loader's ``build_chain``."""
    fallback.setdefault("function", f"{HERE}.answer")
    specs = [
        MiddlewareSpec("resilience.middleware.Fallback", Fallback, "Fallback",
                       Fallback.Options(**fallback)),
        MiddlewareSpec("resilience.middleware.CircuitBreaker", CircuitBreaker, "CircuitBreaker",
                       CircuitBreaker.Options(fail_max=2, reset_timeout=60)),
    ]
    handler, (_, breaker) = build_chain(specs, terminal, method=METHOD, kind=UNARY,
                                        side="client", shared={}, is_async=is_async)
    return handler, breaker


def test_serves_when_the_breaker_is_open_even_if_unavailable_is_not_a_code() -> None:
    backend = Backend(grpc.StatusCode.INTERNAL)
    handler, breaker = breaker_chain(backend, codes=frozenset({grpc.StatusCode.INTERNAL}))
    handler(make_call())
    handler(make_call())
    assert breaker.state == "open"
    with capture_logs() as logs:
        assert handler(make_call("r3")) == ("fallback", "r3")
    assert backend.calls == 2
    error = received[-1][1]
    assert isinstance(error, RpcStatusError)
    assert "circuit breaker" in error.details()
    assert logs == [{"event": "fallback_served", "method": METHOD, "code": "UNAVAILABLE",
                     "log_level": "warning"}]


def test_on_breaker_open_false_lets_the_rejection_through() -> None:
    backend = Backend(UNAVAILABLE)
    handler, breaker = breaker_chain(backend, on_breaker_open=False)
    assert handler(make_call()) == ("fallback", "req")  # the server's UNAVAILABLE: served
    assert handler(make_call()) == ("fallback", "req")
    assert breaker.state == "open"
    with pytest.raises(RpcStatusError) as info:
        handler(make_call())
    assert "circuit breaker" in info.value.details()


def stream_backend(items: list[str], code: grpc.StatusCode | None) -> Any:
    def handler(call: Call) -> Iterator[str]:
        yield from items
        if code is not None:
            raise RpcStatusError(code, "stream boom")
    return handler


def test_stream_falls_back_only_before_the_first_response() -> None:
    mw = make(stream_backend([], UNAVAILABLE), STREAM, function=f"{HERE}.answer_stream")
    with capture_logs() as logs:
        assert list(mw(make_call(kind=STREAM))) == ["f1", "f2"]
    assert [entry["event"] for entry in logs] == ["fallback_served"]

    mw = make(stream_backend(["r1"], UNAVAILABLE), STREAM, function=f"{HERE}.answer_stream",
              observe=f"{HERE}.record")
    seen = []
    with pytest.raises(RpcStatusError):
        for item in mw(make_call(kind=STREAM)):
            seen.append(item)
    assert seen == ["r1"]
    assert observed == [("req", "r1")]
    assert len(received) == 1  # only the first stream's

    mw = make(stream_backend([], grpc.StatusCode.NOT_FOUND), STREAM,
              function=f"{HERE}.answer_stream")
    with pytest.raises(RpcStatusError):
        list(mw(make_call(kind=STREAM)))


def test_closing_a_stream_closes_the_one_below() -> None:
    closed = threading.Event()

    def handler(call: Call) -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            closed.set()

    responses = make(handler, STREAM)(make_call(kind=STREAM))
    assert next(responses) == 0
    responses.close()
    assert closed.is_set()


# --- asyncio path --------------------------------------------------------------------


class AsyncBackend(Backend):
    async def __call__(self, call: Call) -> Any:  # type: ignore[override]
        await asyncio.sleep(0)
        return super().__call__(call)


def test_async_unary_serves_passes_through_and_observes() -> None:
    async def main() -> None:
        mw = make(AsyncBackend(UNAVAILABLE), is_async=True, function=f"{HERE}.answer_async")
        with capture_logs() as logs:
            assert await mw.acall(make_call()) == ("async fallback", "req")
        assert [entry["event"] for entry in logs] == ["fallback_served"]

        mw = make(AsyncBackend(UNAVAILABLE), is_async=True)  # a sync function works too
        assert await mw.acall(make_call()) == ("fallback", "req")

        mw = make(AsyncBackend(grpc.StatusCode.NOT_FOUND), is_async=True)
        with pytest.raises(RpcStatusError):
            await mw.acall(make_call())

        mw = make(AsyncBackend(), is_async=True, observe=f"{HERE}.record")
        assert await mw.acall(make_call()) == "resp"
        assert observed == [("req", "resp")]

    asyncio.run(main())
    assert len(received) == 2


def test_async_breaker_open_is_served() -> None:
    async def main() -> None:
        backend = AsyncBackend(UNAVAILABLE)
        handler, breaker = breaker_chain(backend, is_async=True, on_breaker_open=True)
        for _ in range(2):
            await handler(make_call())
        assert breaker.state == "open"
        assert await handler(make_call("r3")) == ("fallback", "r3")
        assert backend.calls == 2
        assert "circuit breaker" in received[-1][1].details()

    asyncio.run(main())


def test_async_stream_falls_back_only_before_the_first_response() -> None:
    def backend(items: list[str], code: grpc.StatusCode) -> Any:
        async def handler(call: Call) -> AsyncIterator[str]:
            for item in items:
                await asyncio.sleep(0)
                yield item
            raise RpcStatusError(code, "stream boom")
        return handler

    async def collect(responses: AsyncIterator[Any]) -> list[Any]:
        return [item async for item in responses]

    async def main() -> None:
        mw = make(backend([], UNAVAILABLE), STREAM, is_async=True,
                  function=f"{HERE}.answer_async_stream")
        assert await collect(mw.acall(make_call(kind=STREAM))) == ["a1", "a2"]

        mw = make(backend([], UNAVAILABLE), STREAM, is_async=True,
                  function=f"{HERE}.answer_stream")
        assert await collect(mw.acall(make_call(kind=STREAM))) == ["f1", "f2"]

        mw = make(backend(["r1"], UNAVAILABLE), STREAM, is_async=True,
                  function=f"{HERE}.answer_stream", observe=f"{HERE}.record")
        seen = []
        with pytest.raises(RpcStatusError):
            async for item in mw.acall(make_call(kind=STREAM)):
                seen.append(item)
        assert seen == ["r1"]
        assert observed == [("req", "r1")]

    asyncio.run(main())
    assert len(received) == 2


# --- the cache app's example -----------------------------------------------------------


def test_last_values_is_a_bounded_lru() -> None:
    values = fallbacks.LastValues(max_keys=3, max_bytes=100)
    for key in "abc":
        values.put(key, key.encode())
    assert values.get("a") == b"a"  # now the most recently used
    values.put("d", b"d")
    assert "b" not in values
    assert [values.get(k) for k in "acd"] == [b"a", b"c", b"d"]
    assert len(values) == 3

    values.put("big", b"x" * 99)  # 4 keys and 102 bytes: the least recently used go
    assert "a" not in values and "c" not in values
    assert values.get("d") == b"d" and values.bytes == 100
    values.put("big", b"x" * 101)  # too big to keep: the older value is forgotten too
    assert "big" not in values
    assert values.bytes == 1


def test_default_bound_is_ten_thousand_keys() -> None:
    for n in range(fallbacks.MAX_KEYS + 5):
        fallbacks.observe(cache_pb2.GetReq(key=f"k{n}"), cache_pb2.GetResp(value=b"v"))
    assert len(fallbacks.last_values) == fallbacks.MAX_KEYS
    assert "k0" not in fallbacks.last_values
    assert f"k{fallbacks.MAX_KEYS + 4}" in fallbacks.last_values


def test_example_serves_the_last_value_seen_and_re_raises_otherwise() -> None:
    error = RpcStatusError(UNAVAILABLE, "down")
    fallbacks.observe(cache_pb2.GetReq(key="k"), cache_pb2.GetResp(value=b"v1"))
    assert fallbacks.last_value(cache_pb2.GetReq(key="k"), error).value == b"v1"
    fallbacks.observe(cache_pb2.StoreReq(key="k", value=b"v2"), cache_pb2.StoreResp())
    assert fallbacks.last_value(cache_pb2.GetReq(key="k"), error).value == b"v2"

    with pytest.raises(RpcStatusError) as info:
        fallbacks.last_value(cache_pb2.GetReq(key="unknown"), error)
    assert info.value is error
    with pytest.raises(RpcStatusError) as info:
        fallbacks.last_value(cache_pb2.StoreReq(key="k", value=b"v3"), error)
    assert info.value is error
    fallbacks.observe(cache_pb2.DumpReq(), cache_pb2.DumpItem(key="d", val=b"x"))
    assert "d" not in fallbacks.last_values


def test_last_values_is_thread_safe() -> None:
    values = fallbacks.LastValues(max_keys=50, max_bytes=10_000)
    barrier = threading.Barrier(8)

    def work(n: int) -> None:
        barrier.wait(timeout=5)
        for i in range(2000):
            values.put(f"{n}-{i % 80}", b"xy")
            values.get(f"{(n + 1) % 8}-{i % 80}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(values) == 50
    assert values.bytes == 100
