"""A request that does not deserialize gets grpcio's sync server's answer from every server
kind (INTERNAL, "Exception deserializing request!", no parser text), and the stack sees
the call: Metrics counts it with that code and RequestLogging logs its ``rpc`` line.

Without the stack grpc answers such a request before any handler runs: the sync server
with that INTERNAL, which no middleware saw, and grpc.aio with UNKNOWN and the parser's
exception text. gRPC's status code table gives INTERNAL for "error parsing request
proto" and says the library never generates INVALID_ARGUMENT, so INTERNAL is kept.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import grpc.aio
import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from apps.cache.protos import cache_pb2
from resilience.interceptors import aio_server_interceptor, server_interceptor
from resilience.transport.server import UNDECODABLE_DETAILS
from tests.integration.test_server_status import (
    STACK,
    AsyncServicer,
    Servicer,
    grpc_server,
    handled,
    recorded,
    stacked_server,
)
from tests.support.plain import plain_grpc_server
from tests.support.servers import make_settings

pytestmark = pytest.mark.timeout(60)

REFERENCE = ("INTERNAL", UNDECODABLE_DETAILS)
GOOD = cache_pb2.GetReq(key="k").SerializeToString()
# Bytes each request type refuses: a corrupt tag, a string that is not UTF-8, a length
# running past the end.
BAD: dict[str, bytes] = {
    "corrupt": b"\xff\xff\xff",
    "bad utf-8": b"\x0a\x02\xc3\x28",
    "truncated": b"\x0a\x05ab",
}
Ended = tuple[str, str]


class CountingServicer(Servicer):
    """The status tests' servicer, counting the calls that reach it."""

    def __init__(self) -> None:
        self.calls = 0

    def Get(self, request: cache_pb2.GetReq, context: grpc.ServicerContext) -> Any:
        self.calls += 1
        return super().Get(request, context)

    def Dump(self, request: cache_pb2.DumpReq, context: grpc.ServicerContext) -> Iterator[Any]:
        self.calls += 1
        return super().Dump(request, context)


class AsyncCountingServicer(AsyncServicer):
    def __init__(self) -> None:
        self.calls = 0

    async def Get(self, request: cache_pb2.GetReq, context: grpc.aio.ServicerContext) -> Any:
        self.calls += 1
        return await super().Get(request, context)

    async def Dump(self, request: cache_pb2.DumpReq, context: grpc.aio.ServicerContext
                   ) -> AsyncIterator[Any]:
        self.calls += 1
        async for item in super().Dump(request, context):
            yield item


def raw(address: str, method: str, data: bytes, timeout: float = 10) -> Ended:
    """Send ``data`` as the request of ``cache.CacheService/method``, unserialized."""
    with grpc.insecure_channel(address) as channel:
        path = f"/cache.CacheService/{method}"
        try:
            if method == "Dump":
                list(channel.unary_stream(path, request_serializer=None)(data, timeout=timeout))
            else:
                channel.unary_unary(path, request_serializer=None)(data, timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code().name, exc.details()
    return "OK", ""


@pytest.fixture(scope="module")
def reference() -> Iterator[str]:
    """A plain grpcio sync server: the answer every server kind must give."""
    with grpc_server("sync", []) as address:
        yield address


SERVERS = [("sync", "framework"), ("sync", "interceptor"), ("aio", "framework"),
           ("aio", "interceptor")]


@pytest.fixture(scope="module", params=SERVERS, ids=["-".join(s) for s in SERVERS])
def stacked(request: pytest.FixtureRequest) -> Iterator[tuple[str, Any]]:
    mode, kind = request.param
    servicer = CountingServicer() if mode == "sync" else AsyncCountingServicer()
    with stacked_server(mode, kind, servicer) as address:
        yield address, servicer


# DumpReq has no fields, so only a corrupt tag fails it.
CASES = [("Get", bad) for bad in BAD] + [("Dump", "corrupt")]


@pytest.mark.parametrize(("method", "bad"), CASES, ids=[f"{m}-{b}" for m, b in CASES])
def test_an_undecodable_request_is_answered_as_grpcio_sync_and_recorded(
    method: str, bad: str, reference: str, stacked: tuple[str, Any]
) -> None:
    data = BAD[bad]
    assert raw(reference, method, data) == REFERENCE
    address, servicer = stacked
    calls = servicer.calls
    before = handled(method)
    with capture_logs() as logs:
        got = raw(address, method, data)
        counted = recorded(method, before)
    assert got == REFERENCE
    assert counted == {"INTERNAL": 1}
    assert servicer.calls == calls  # the servicer never saw it
    assert [(line["code"], line["method"]) for line in logs if line["event"] == "rpc"] == [
        ("INTERNAL", f"cache.CacheService/{method}")]
    [undecodable] = [line for line in logs if line["event"] == "request_undecodable"]
    assert undecodable["method"] == f"cache.CacheService/{method}"
    assert undecodable["size"] == len(data)
    assert undecodable["error"].startswith("DecodeError: ")  # for the server's log only


def test_a_request_that_parses_still_reaches_the_servicer(stacked: tuple[str, Any]) -> None:
    address, servicer = stacked
    calls = servicer.calls
    before = handled("Get")
    assert raw(address, "Get", GOOD) == ("OK", "")
    assert recorded("Get", before) == {"OK": 1}
    assert servicer.calls == calls + 1


def test_plain_grpc_aio_answers_unknown_with_the_parsers_text() -> None:
    """The premise: without the stack, grpc.aio shows the client the parser's exception."""
    with grpc_server("aio", []) as address:
        code, details = raw(address, "Get", BAD["corrupt"])
    assert code == "UNKNOWN"
    assert "DecodeError" in details


# --- request streams, through the plain interceptors (every method is stacked) --------------

KEYS = "/test.Keys/"


def _count(requests: Iterator[cache_pb2.GetReq], context: Any) -> cache_pb2.GetResp:
    return cache_pb2.GetResp(value=str(sum(1 for _ in requests)).encode())


def _keys(requests: Iterator[cache_pb2.GetReq], context: Any) -> Iterator[cache_pb2.DumpItem]:
    for request in requests:
        yield cache_pb2.DumpItem(key=request.key)


async def _acount(requests: AsyncIterator[cache_pb2.GetReq], context: Any
                  ) -> cache_pb2.GetResp:
    return cache_pb2.GetResp(value=str(len([r async for r in requests])).encode())


async def _akeys(requests: AsyncIterator[cache_pb2.GetReq], context: Any
                 ) -> AsyncIterator[cache_pb2.DumpItem]:
    async for request in requests:
        yield cache_pb2.DumpItem(key=request.key)


async def _aread(requests: Any, context: grpc.aio.ServicerContext) -> cache_pb2.GetResp:
    """Reads with ``context.read()``, which must still hand over parsed messages."""
    keys = []
    while (request := await context.read()) is not grpc.aio.EOF:
        keys.append(request.key)
    return cache_pb2.GetResp(value=",".join(keys).encode())


def _keys_service(count: Any, keys: Any, read: Any) -> grpc.GenericRpcHandler:
    parse = cache_pb2.GetReq.FromString
    return grpc.method_handlers_generic_handler("test.Keys", {
        "Count": grpc.stream_unary_rpc_method_handler(
            count, request_deserializer=parse,
            response_serializer=cache_pb2.GetResp.SerializeToString),
        "Keys": grpc.stream_stream_rpc_method_handler(
            keys, request_deserializer=parse,
            response_serializer=cache_pb2.DumpItem.SerializeToString),
        "Read": grpc.stream_unary_rpc_method_handler(
            read, request_deserializer=parse,
            response_serializer=cache_pb2.GetResp.SerializeToString),
    })


def keys_server(mode: str, stacked: bool) -> contextlib.AbstractContextManager[str]:
    """A plain grpcio server of ``mode`` with the request-streaming test.Keys service, with
    the stack as an interceptor if ``stacked``; its address."""
    settings = make_settings(SERVER_MIDDLEWARE=STACK)
    if mode == "sync":
        return plain_grpc_server(
            mode, lambda: [server_interceptor(settings)] if stacked else [],
            lambda server: server.add_generic_rpc_handlers(
                (_keys_service(_count, _keys, _count),)), 4,
        )
    return plain_grpc_server(
        mode, lambda: [aio_server_interceptor(settings)] if stacked else [],
        lambda server: server.add_generic_rpc_handlers((_keys_service(_acount, _akeys, _aread),)),
    )


def stream_raw(address: str, method: str, messages: list[bytes]) -> tuple[Ended, Any]:
    """Send ``messages`` unserialized to a test.Keys method; its end and raw answer."""
    with grpc.insecure_channel(address) as channel:
        try:
            if method == "Keys":
                answer: Any = list(channel.stream_stream(KEYS + method)(iter(messages),
                                                                       timeout=10))
            else:
                answer = channel.stream_unary(KEYS + method)(iter(messages), timeout=10)
        except grpc.RpcError as exc:
            return (exc.code().name, exc.details()), None
    return ("OK", ""), answer


def keys_handled(method: str) -> dict[str, float]:
    """grpc_server_handled_total of a test.Keys method, by code."""
    grpc_type = "bidi_stream" if method == "Keys" else "client_stream"
    return {code.name: REGISTRY.get_sample_value("grpc_server_handled_total", {
        "grpc_type": grpc_type, "grpc_service": "test.Keys", "grpc_method": method,
        "grpc_code": code.name}) or 0 for code in grpc.StatusCode}


# context.read() is grpc.aio's only.
STREAMS = [("sync", "Count"), ("sync", "Keys"), ("aio", "Count"), ("aio", "Keys"),
           ("aio", "Read")]


@pytest.mark.parametrize(("mode", "method"), STREAMS, ids=["-".join(s) for s in STREAMS])
def test_a_bad_message_in_a_request_stream(mode: str, method: str) -> None:
    """It ends the call with grpcio's sync answer, and the stack records that status."""
    messages = [GOOD, GOOD, BAD["corrupt"], GOOD]
    with keys_server("sync", stacked=False) as reference:
        assert stream_raw(reference, "Count", messages)[0] == REFERENCE
    before = keys_handled(method)
    with keys_server(mode, stacked=True) as address, capture_logs() as logs:
        ended, _ = stream_raw(address, method, messages)
        good, answer = stream_raw(address, method, [GOOD, GOOD])
    assert ended == REFERENCE
    assert good == ("OK", "")
    assert answer is not None
    grown = {code: n - before[code] for code, n in keys_handled(method).items()
             if n != before[code]}
    assert grown == {"INTERNAL": 1, "OK": 1}
    assert [line["code"] for line in logs if line["event"] == "rpc"] == ["INTERNAL", "OK"]
