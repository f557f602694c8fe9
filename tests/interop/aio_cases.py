"""The interop client cases for grpc.aio: the same cases and assertions as ``cases.py``,
in the asyncio API's own idioms: ``await call.initial_metadata()``, a call's
``write()``/``read()``/``done_writing()`` where the document sends one request after each
reply, ``call.cancel()`` and ``await call.code()``.

Most streams here are driven with ``write()``, as the document's procedures are written;
client_streaming passes an async iterator, so both ways of feeding a request stream are
covered.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import grpc.aio
import pytest

from tests.interop.cases import (
    ECHO_METADATA,
    LARGE_REQUEST_SIZE,
    LARGE_RESPONSE_SIZE,
    SPECIAL_STATUS_MESSAGE,
    STATUS_MESSAGE,
    STREAM_REQUEST_SIZES,
    STREAM_RESPONSE_SIZES,
    Stubs,
    assert_echoed,
    assert_large_response,
    large_request,
    status_request,
    streaming_request,
)
from tests.interop.protos import empty_pb2, messages_pb2
from tests.interop.servicer import payload


async def empty_unary(stubs: Stubs) -> None:
    response = await stubs.test.EmptyCall(empty_pb2.Empty())
    assert isinstance(response, empty_pb2.Empty)


async def large_unary(stubs: Stubs) -> None:
    assert_large_response(await stubs.test.UnaryCall(large_request()))


async def client_streaming(stubs: Stubs) -> None:
    async def requests() -> AsyncIterator[messages_pb2.StreamingInputCallRequest]:
        for size in STREAM_REQUEST_SIZES:
            yield messages_pb2.StreamingInputCallRequest(payload=payload(size))

    response = await stubs.test.StreamingInputCall(requests())
    assert response.aggregated_payload_size == 74922


async def server_streaming(stubs: Stubs) -> None:
    request = messages_pb2.StreamingOutputCallRequest(response_type=messages_pb2.COMPRESSABLE)
    for size in STREAM_RESPONSE_SIZES:
        request.response_parameters.add(size=size)
    responses = [r async for r in stubs.test.StreamingOutputCall(request)]
    assert [len(r.payload.body) for r in responses] == list(STREAM_RESPONSE_SIZES)
    assert all(r.payload.body == b"\0" * len(r.payload.body) for r in responses)


async def ping_pong(stubs: Stubs) -> None:
    call = stubs.test.FullDuplexCall()
    for request_size, response_size in zip(STREAM_REQUEST_SIZES, STREAM_RESPONSE_SIZES,
                                           strict=True):
        await call.write(streaming_request(response_size, request_size))
        response = await call.read()
        assert len(response.payload.body) == response_size
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF  # exactly four
    assert await call.code() is grpc.StatusCode.OK


async def empty_stream(stubs: Stubs) -> None:
    call = stubs.test.FullDuplexCall()
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() is grpc.StatusCode.OK


async def custom_metadata(stubs: Stubs) -> None:
    unary = stubs.test.UnaryCall(large_request(), metadata=ECHO_METADATA)
    assert_large_response(await unary)
    assert_echoed(await unary.initial_metadata(), await unary.trailing_metadata())

    duplex = stubs.test.FullDuplexCall(metadata=ECHO_METADATA)
    await duplex.write(streaming_request(LARGE_RESPONSE_SIZE, LARGE_REQUEST_SIZE))
    await duplex.done_writing()
    assert [len(r.payload.body) async for r in duplex] == [LARGE_RESPONSE_SIZE]
    assert_echoed(await duplex.initial_metadata(), await duplex.trailing_metadata())


async def status_code_and_message(stubs: Stubs) -> None:
    with pytest.raises(grpc.RpcError) as unary:
        await stubs.test.UnaryCall(status_request(STATUS_MESSAGE))
    assert unary.value.code() is grpc.StatusCode.UNKNOWN
    assert unary.value.details() == STATUS_MESSAGE

    duplex = stubs.test.FullDuplexCall()
    await duplex.write(streaming_request(status=(2, STATUS_MESSAGE)))
    await duplex.done_writing()
    assert await duplex.code() is grpc.StatusCode.UNKNOWN
    assert await duplex.details() == STATUS_MESSAGE


async def special_status_message(stubs: Stubs) -> None:
    with pytest.raises(grpc.RpcError) as unary:
        await stubs.test.UnaryCall(status_request(SPECIAL_STATUS_MESSAGE))
    assert unary.value.code() is grpc.StatusCode.UNKNOWN
    assert unary.value.details() == SPECIAL_STATUS_MESSAGE


async def unimplemented_method(stubs: Stubs) -> None:
    with pytest.raises(grpc.RpcError) as error:
        await stubs.test.UnimplementedCall(empty_pb2.Empty())
    assert error.value.code() is grpc.StatusCode.UNIMPLEMENTED


async def unimplemented_service(stubs: Stubs) -> None:
    with pytest.raises(grpc.RpcError) as error:
        await stubs.unimplemented.UnimplementedCall(empty_pb2.Empty())
    assert error.value.code() is grpc.StatusCode.UNIMPLEMENTED


async def cancel_after_begin(stubs: Stubs) -> None:
    call = stubs.test.StreamingInputCall()  # nothing written: cancelled before any request
    call.cancel()
    assert await call.code() is grpc.StatusCode.CANCELLED


async def cancel_after_first_response(stubs: Stubs) -> None:
    call = stubs.test.FullDuplexCall()
    await call.write(streaming_request(31415, 27182))
    assert len((await call.read()).payload.body) == 31415
    call.cancel()
    assert await call.code() is grpc.StatusCode.CANCELLED


async def timeout_on_sleeping_server(stubs: Stubs) -> None:
    call = stubs.test.FullDuplexCall(timeout=0.001)  # never half-closed
    # 1 ms may be over before the request goes out; the write then reports the ended call.
    with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError):
        await call.write(streaming_request(request_size=27182))
    assert await call.code() is grpc.StatusCode.DEADLINE_EXCEEDED


#: Every case, in the document's order, as in ``cases.CASES``.
AIO_CASES: dict[str, Callable[[Stubs], Awaitable[None]]] = {
    case.__name__: case
    for case in (
        empty_unary, large_unary, client_streaming, server_streaming, ping_pong,
        empty_stream, custom_metadata, status_code_and_message, special_status_message,
        unimplemented_method, unimplemented_service, cancel_after_begin,
        cancel_after_first_response, timeout_on_sleeping_server,
    )
}
