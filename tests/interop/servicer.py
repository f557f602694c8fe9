"""The interop TestService, sync and grpc.aio, as the "Server" section of grpc/grpc's
doc/interop-test-descriptions.md asks: EmptyCall, UnaryCall, StreamingOutputCall,
StreamingInputCall and FullDuplexCall, with Echo Status, Echo Metadata and
``interval_us``.

UnimplementedCall (and CacheableUnaryCall, HalfDuplexCall) are deliberately left to the
generated base class, whose methods answer UNIMPLEMENTED: that is what the
unimplemented_method case checks, so a server must serve the base class's method as is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any

import grpc
import grpc.aio

from tests.interop.protos import empty_pb2, messages_pb2, test_pb2_grpc

#: Echo Metadata: the server sends this key back in its initial metadata...
ECHO_INITIAL_KEY = "x-grpc-test-echo-initial"
#: ...and this one in its trailing metadata.
ECHO_TRAILING_KEY = "x-grpc-test-echo-trailing-bin"

_CODES = {code.value[0]: code for code in grpc.StatusCode}

Metadata = tuple[tuple[str, str | bytes], ...]


def payload(size: int) -> messages_pb2.Payload:
    """A COMPRESSABLE payload of ``size`` zero bytes, as every case sends and expects."""
    return messages_pb2.Payload(type=messages_pb2.COMPRESSABLE, body=b"\0" * size)


def echoed(metadata: Sequence[tuple[str, str | bytes]] | None) -> tuple[Metadata, Metadata]:
    """The (initial, trailing) metadata Echo Metadata sends back for ``metadata``."""
    metadata = tuple(metadata or ())
    initial = tuple((k, v) for k, v in metadata if k == ECHO_INITIAL_KEY)
    trailing = tuple((k, v) for k, v in metadata if k == ECHO_TRAILING_KEY)
    return initial, trailing


def requested_status(request: Any) -> tuple[grpc.StatusCode, str] | None:
    """Echo Status: the (code, message) a request asks the call to end with, if any.

    An unknown number is UNKNOWN, as grpc reads it off the wire; OK asks for nothing.
    """
    if not request.HasField("response_status") or request.response_status.code == 0:
        return None
    status = request.response_status
    return _CODES.get(status.code, grpc.StatusCode.UNKNOWN), status.message


def unsupported_type(request: Any) -> str | None:
    """Why the server must refuse ``request`` with INVALID_ARGUMENT, if it must: it asks for
    a payload type other than COMPRESSABLE, the only one there is."""
    if request.response_type != messages_pb2.COMPRESSABLE:
        return f"response_type {request.response_type} is not supported"
    return None


class InteropServicer(test_pb2_grpc.TestServiceServicer):
    """The sync TestService: a handler per method, run on the server's worker threads."""

    def _start(self, context: grpc.ServicerContext) -> None:
        """Echo Metadata, before any response: initial now, trailing with the status."""
        initial, trailing = echoed(context.invocation_metadata())
        if initial:
            context.send_initial_metadata(initial)
        if trailing:
            context.set_trailing_metadata(trailing)

    def _check(self, request: Any, context: grpc.ServicerContext) -> None:
        """Abort as Echo Status asks, or for an unsupported payload type."""
        if status := requested_status(request):
            context.abort(*status)
        if problem := unsupported_type(request):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)

    def EmptyCall(self, request: empty_pb2.Empty, context: grpc.ServicerContext
                  ) -> empty_pb2.Empty:
        self._start(context)
        return empty_pb2.Empty()

    def UnaryCall(self, request: messages_pb2.SimpleRequest, context: grpc.ServicerContext
                  ) -> messages_pb2.SimpleResponse:
        self._start(context)
        self._check(request, context)
        return messages_pb2.SimpleResponse(payload=payload(request.response_size))

    def _responses(self, request: messages_pb2.StreamingOutputCallRequest,
                   context: grpc.ServicerContext
                   ) -> Iterator[messages_pb2.StreamingOutputCallResponse]:
        """One request's responses, each after its ``interval_us``."""
        self._check(request, context)
        for parameters in request.response_parameters:
            if parameters.interval_us:
                time.sleep(parameters.interval_us / 1e6)
            yield messages_pb2.StreamingOutputCallResponse(payload=payload(parameters.size))

    def StreamingOutputCall(self, request: messages_pb2.StreamingOutputCallRequest,
                            context: grpc.ServicerContext
                            ) -> Iterator[messages_pb2.StreamingOutputCallResponse]:
        self._start(context)
        yield from self._responses(request, context)

    def StreamingInputCall(self, request_iterator: Iterable[messages_pb2.StreamingInputCallRequest],
                           context: grpc.ServicerContext
                           ) -> messages_pb2.StreamingInputCallResponse:
        self._start(context)
        size = sum(len(request.payload.body) for request in request_iterator)
        return messages_pb2.StreamingInputCallResponse(aggregated_payload_size=size)

    def FullDuplexCall(self, request_iterator: Iterable[messages_pb2.StreamingOutputCallRequest],
                       context: grpc.ServicerContext
                       ) -> Iterator[messages_pb2.StreamingOutputCallResponse]:
        self._start(context)
        for request in request_iterator:
            yield from self._responses(request, context)


class AsyncInteropServicer(test_pb2_grpc.TestServiceServicer):
    """The grpc.aio TestService: coroutines, and async generators for response streams,
    as the framework's asyncio server requires."""

    async def _start(self, context: grpc.aio.ServicerContext) -> None:
        initial, trailing = echoed(context.invocation_metadata())
        if initial:
            await context.send_initial_metadata(initial)
        if trailing:
            context.set_trailing_metadata(trailing)

    async def _check(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        if status := requested_status(request):
            await context.abort(*status)
        if problem := unsupported_type(request):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)

    async def EmptyCall(self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext
                        ) -> empty_pb2.Empty:
        await self._start(context)
        return empty_pb2.Empty()

    async def UnaryCall(self, request: messages_pb2.SimpleRequest,
                        context: grpc.aio.ServicerContext) -> messages_pb2.SimpleResponse:
        await self._start(context)
        await self._check(request, context)
        return messages_pb2.SimpleResponse(payload=payload(request.response_size))

    async def _responses(self, request: messages_pb2.StreamingOutputCallRequest,
                         context: grpc.aio.ServicerContext
                         ) -> AsyncIterator[messages_pb2.StreamingOutputCallResponse]:
        await self._check(request, context)
        for parameters in request.response_parameters:
            if parameters.interval_us:
                await asyncio.sleep(parameters.interval_us / 1e6)
            yield messages_pb2.StreamingOutputCallResponse(payload=payload(parameters.size))

    async def StreamingOutputCall(self, request: messages_pb2.StreamingOutputCallRequest,
                                  context: grpc.aio.ServicerContext
                                  ) -> AsyncIterator[messages_pb2.StreamingOutputCallResponse]:
        await self._start(context)
        async for response in self._responses(request, context):
            yield response

    async def StreamingInputCall(
        self, request_iterator: AsyncIterator[messages_pb2.StreamingInputCallRequest],
        context: grpc.aio.ServicerContext,
    ) -> messages_pb2.StreamingInputCallResponse:
        await self._start(context)
        size = 0
        async for request in request_iterator:
            size += len(request.payload.body)
        return messages_pb2.StreamingInputCallResponse(aggregated_payload_size=size)

    async def FullDuplexCall(
        self, request_iterator: AsyncIterator[messages_pb2.StreamingOutputCallRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[messages_pb2.StreamingOutputCallResponse]:
        await self._start(context)
        async for request in request_iterator:
            async for response in self._responses(request, context):
                yield response
