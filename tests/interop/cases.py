"""The interop client cases of grpc/grpc's doc/interop-test-descriptions.md, for the sync
grpc API: each case is written once against stubs and asserts what the document asserts,
so the same code checks a plain grpc channel, the framework's ``connect()`` and the plain
interceptors.

Cases use the parts of grpc's API the document implies: ``with_call`` and the response
iterator's ``initial_metadata()``/``trailing_metadata()`` for metadata, ``future()`` and
``cancel()`` for cancellation, the response iterator's ``code()`` for a call's status.
"""

from __future__ import annotations

import dataclasses
import queue
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from tests.interop.protos import empty_pb2, messages_pb2, test_pb2_grpc
from tests.interop.servicer import ECHO_INITIAL_KEY, ECHO_TRAILING_KEY, payload

LARGE_REQUEST_SIZE = 271828
LARGE_RESPONSE_SIZE = 314159
STREAM_REQUEST_SIZES = (27182, 8, 1828, 45904)
STREAM_RESPONSE_SIZES = (31415, 9, 2653, 58979)
ECHO_INITIAL_VALUE = "test_initial_metadata_value"
ECHO_TRAILING_VALUE = b"\xab\xab\xab"
ECHO_METADATA = ((ECHO_INITIAL_KEY, ECHO_INITIAL_VALUE), (ECHO_TRAILING_KEY, ECHO_TRAILING_VALUE))
STATUS_MESSAGE = "test status message"
SPECIAL_STATUS_MESSAGE = "\t\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\t\n"


@dataclasses.dataclass(frozen=True)
class Stubs:
    """What a case calls: TestService, and UnimplementedService for unimplemented_service."""

    test: Any
    unimplemented: Any

    @classmethod
    def on(cls, channel: Any) -> Stubs:
        """The generated stubs on ``channel`` (sync or grpc.aio, plain or resilient)."""
        return cls(test_pb2_grpc.TestServiceStub(channel),
                   test_pb2_grpc.UnimplementedServiceStub(channel))


def streaming_request(response_size: int | None = None, request_size: int = 0,
                      status: tuple[int, str] | None = None
                      ) -> messages_pb2.StreamingOutputCallRequest:
    """A StreamingOutputCallRequest as the document writes them (COMPRESSABLE throughout)."""
    request = messages_pb2.StreamingOutputCallRequest(response_type=messages_pb2.COMPRESSABLE)
    if response_size is not None:
        request.response_parameters.add(size=response_size)
    if request_size:
        request.payload.CopyFrom(payload(request_size))
    if status is not None:
        request.response_status.code, request.response_status.message = status
    return request


def large_request() -> messages_pb2.SimpleRequest:
    """large_unary's and custom_metadata's request: 271828 zeros out, 314159 back."""
    return messages_pb2.SimpleRequest(
        response_type=messages_pb2.COMPRESSABLE, response_size=LARGE_RESPONSE_SIZE,
        payload=payload(LARGE_REQUEST_SIZE),
    )


def status_request(message: str) -> messages_pb2.SimpleRequest:
    """A SimpleRequest asking the server to end the call with code 2 (UNKNOWN)."""
    return messages_pb2.SimpleRequest(
        response_status=messages_pb2.EchoStatus(code=2, message=message)
    )


def values(metadata: Any, key: str) -> list[Any]:
    """Every value of ``key`` in grpc metadata (pairs, or grpc.aio's Metadata)."""
    return [value for k, value in (metadata or ()) if k == key]


def assert_echoed(initial: Any, trailing: Any) -> None:
    """Echo Metadata: the initial value came back first, the binary one as a trailer."""
    assert values(initial, ECHO_INITIAL_KEY) == [ECHO_INITIAL_VALUE]
    assert values(trailing, ECHO_TRAILING_KEY) == [ECHO_TRAILING_VALUE]


def assert_large_response(response: messages_pb2.SimpleResponse) -> None:
    assert response.payload.body == b"\0" * LARGE_RESPONSE_SIZE


class RequestPipe:
    """A request iterator the case feeds one request at a time, as the document's
    "after getting a reply, it sends"; ``close()`` half-closes. grpc reads it from a
    thread of its own, which ``close()`` also releases."""

    _CLOSED = object()

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def add(self, request: Any) -> None:
        self._queue.put(request)

    def close(self) -> None:
        self._queue.put(self._CLOSED)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        request = self._queue.get()
        if request is self._CLOSED:
            self._queue.put(request)  # stays closed for any further read
            raise StopIteration
        return request

    def __enter__(self) -> RequestPipe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def empty_unary(stubs: Stubs) -> None:
    response = stubs.test.EmptyCall(empty_pb2.Empty())
    assert isinstance(response, empty_pb2.Empty)


def large_unary(stubs: Stubs) -> None:
    assert_large_response(stubs.test.UnaryCall(large_request()))


def client_streaming(stubs: Stubs) -> None:
    requests = (messages_pb2.StreamingInputCallRequest(payload=payload(size))
                for size in STREAM_REQUEST_SIZES)
    response = stubs.test.StreamingInputCall(requests)
    assert response.aggregated_payload_size == 74922


def server_streaming(stubs: Stubs) -> None:
    request = messages_pb2.StreamingOutputCallRequest(response_type=messages_pb2.COMPRESSABLE)
    for size in STREAM_RESPONSE_SIZES:
        request.response_parameters.add(size=size)
    responses = list(stubs.test.StreamingOutputCall(request))
    assert [len(r.payload.body) for r in responses] == list(STREAM_RESPONSE_SIZES)
    assert all(r.payload.body == b"\0" * len(r.payload.body) for r in responses)


def ping_pong(stubs: Stubs) -> None:
    with RequestPipe() as pipe:
        responses = stubs.test.FullDuplexCall(pipe)
        for request_size, response_size in zip(STREAM_REQUEST_SIZES, STREAM_RESPONSE_SIZES,
                                               strict=True):
            pipe.add(streaming_request(response_size, request_size))
            response = next(responses)
            assert len(response.payload.body) == response_size
        pipe.close()
        assert list(responses) == []  # exactly four, and the call ends OK


def empty_stream(stubs: Stubs) -> None:
    responses = stubs.test.FullDuplexCall(iter(()))
    assert list(responses) == []


def custom_metadata(stubs: Stubs) -> None:
    response, call = stubs.test.UnaryCall.with_call(large_request(), metadata=ECHO_METADATA)
    assert_large_response(response)
    assert_echoed(call.initial_metadata(), call.trailing_metadata())

    request = streaming_request(LARGE_RESPONSE_SIZE, LARGE_REQUEST_SIZE)
    responses = stubs.test.FullDuplexCall(iter([request]), metadata=ECHO_METADATA)
    assert [len(r.payload.body) for r in responses] == [LARGE_RESPONSE_SIZE]
    assert_echoed(responses.initial_metadata(), responses.trailing_metadata())


def _assert_status(error: Any, message: str) -> None:
    assert error.code() is grpc.StatusCode.UNKNOWN
    assert error.details() == message


def status_code_and_message(stubs: Stubs) -> None:
    with pytest.raises(grpc.RpcError) as unary:
        stubs.test.UnaryCall(status_request(STATUS_MESSAGE))
    _assert_status(unary.value, STATUS_MESSAGE)

    request = streaming_request(status=(2, STATUS_MESSAGE))
    responses = stubs.test.FullDuplexCall(iter([request]))
    with pytest.raises(grpc.RpcError) as duplex:
        next(responses)
    _assert_status(duplex.value, STATUS_MESSAGE)


def special_status_message(stubs: Stubs) -> None:
    with pytest.raises(grpc.RpcError) as unary:
        stubs.test.UnaryCall(status_request(SPECIAL_STATUS_MESSAGE))
    _assert_status(unary.value, SPECIAL_STATUS_MESSAGE)


def unimplemented_method(stubs: Stubs) -> None:
    with pytest.raises(grpc.RpcError) as error:
        stubs.test.UnimplementedCall(empty_pb2.Empty())
    assert error.value.code() is grpc.StatusCode.UNIMPLEMENTED


def unimplemented_service(stubs: Stubs) -> None:
    with pytest.raises(grpc.RpcError) as error:
        stubs.unimplemented.UnimplementedCall(empty_pb2.Empty())
    assert error.value.code() is grpc.StatusCode.UNIMPLEMENTED


def cancel_after_begin(stubs: Stubs) -> None:
    with RequestPipe() as pipe:  # never fed: cancelled before any request is sent
        future = stubs.test.StreamingInputCall.future(pipe)
        future.cancel()
        assert future.code() is grpc.StatusCode.CANCELLED


def cancel_after_first_response(stubs: Stubs) -> None:
    with RequestPipe() as pipe:
        responses = stubs.test.FullDuplexCall(pipe)
        pipe.add(streaming_request(31415, 27182))
        assert len(next(responses).payload.body) == 31415
        responses.cancel()
        assert responses.code() is grpc.StatusCode.CANCELLED


def timeout_on_sleeping_server(stubs: Stubs) -> None:
    with RequestPipe() as pipe:  # never half-closed: the server waits for more
        responses = stubs.test.FullDuplexCall(pipe, timeout=0.001)
        pipe.add(streaming_request(request_size=27182))
        with pytest.raises(grpc.RpcError) as error:
            next(responses)
        assert error.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


#: Every case, in the document's order.
CASES: dict[str, Callable[[Stubs], None]] = {
    case.__name__: case
    for case in (
        empty_unary, large_unary, client_streaming, server_streaming, ping_pong,
        empty_stream, custom_metadata, status_code_and_message, special_status_message,
        unimplemented_method, unimplemented_service, cancel_after_begin,
        cancel_after_first_response, timeout_on_sleeping_server,
    )
}
