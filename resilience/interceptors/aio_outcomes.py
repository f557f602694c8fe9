"""What an asyncio intercepted call returns, where grpc.aio wants a call rather than a
response: a request stream the chain answered, a response stream through the chain, and
our own statuses as grpc.aio's error type."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio

from resilience.core.call import Call
from resilience.core.errors import RpcStatusError
from resilience.interceptors.chains import CONTINUATION
from resilience.transport.client import CallOptions


def aio_error(error: RpcStatusError) -> grpc.aio.AioRpcError:
    """Our status as grpc.aio's error type, which grpc.aio's intercepted calls expect."""
    return grpc.aio.AioRpcError(
        error.code(), grpc.aio.Metadata(),
        grpc.aio.Metadata(*error.trailing_metadata()), error.details(),
    )


class AioDone(grpc.aio.StreamUnaryCall):
    """A request-streaming call the chain answered; grpc.aio awaits it for the response."""

    def __init__(self, response: Any, rpc: Any) -> None:
        self._response = response
        self._rpc = rpc

    def __await__(self) -> Any:
        if False:  # a generator, as __await__ must be, that returns at once
            yield None
        return self._response

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def time_remaining(self) -> float | None:
        return None

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        callback(self)

    async def initial_metadata(self) -> Any:
        return None if self._rpc is None else await self._rpc.initial_metadata()

    async def trailing_metadata(self) -> Any:
        return None if self._rpc is None else await self._rpc.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK

    async def details(self) -> str:
        return ""

    async def debug_error_string(self) -> str | None:
        return None

    async def wait_for_connection(self) -> None:
        return None

    async def write(self, request: Any) -> None:
        raise NotImplementedError("the call has ended")

    async def done_writing(self) -> None:
        return None


class AioStream(grpc.aio.UnaryStreamCall, grpc.aio.StreamStreamCall):
    """A response stream through the async chain, with the Call methods of its current
    attempt. Each read runs with the continuation in context, since the chain's layers
    start on the first read, in the reader's task."""

    def __init__(self, responses: AsyncIterator[Any], call: Call,
                 continuation: Callable[..., Any]) -> None:
        self._responses = responses
        self._opts: CallOptions = call.context
        self._continuation = continuation
        self._reader: AsyncIterator[Any] | None = None
        self._error: grpc.aio.AioRpcError | None = None
        self._ended = False
        self._cancelled = False
        self._callbacks: list[Callable[[Any], None]] = []

    def __aiter__(self) -> AsyncIterator[Any]:
        if self._reader is None:
            self._reader = self._read_all()
        return self._reader

    async def _read_all(self) -> AsyncIterator[Any]:
        try:
            while True:
                token = CONTINUATION.set(self._continuation)
                try:
                    response = await anext(self._responses)
                except StopAsyncIteration:
                    return
                except RpcStatusError as exc:
                    self._error = aio_error(exc)
                    raise self._error from None
                finally:
                    CONTINUATION.reset(token)
                yield response
        finally:
            # A reader that stops early ends the chain now, and with it the RPC.
            aclose = getattr(self._responses, "aclose", None)
            if aclose is not None:
                await aclose()
            self._ended = True
            callbacks, self._callbacks = self._callbacks, []
            for callback in callbacks:
                callback(self)

    async def read(self) -> Any:
        try:
            return await anext(aiter(self))
        except StopAsyncIteration:
            return grpc.aio.EOF

    def _rpc(self) -> Any:
        return self._opts.grpc_call

    def cancel(self) -> bool:
        self._cancelled = True
        rpc = self._rpc()
        return True if rpc is None else bool(rpc.cancel())

    def cancelled(self) -> bool:
        rpc = self._rpc()
        return self._cancelled or (rpc is not None and bool(rpc.cancelled()))

    def done(self) -> bool:
        return self._ended

    def time_remaining(self) -> float | None:
        rpc = self._rpc()
        return None if rpc is None else rpc.time_remaining()

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._ended:
            callback(self)
        else:
            self._callbacks.append(callback)

    async def initial_metadata(self) -> Any:
        rpc = self._rpc()
        return None if rpc is None else await rpc.initial_metadata()

    async def trailing_metadata(self) -> Any:
        if self._error is not None:
            return self._error.trailing_metadata()
        rpc = self._rpc()
        return None if rpc is None else await rpc.trailing_metadata()

    async def code(self) -> grpc.StatusCode | None:
        if self._error is not None:
            return self._error.code()
        rpc = self._rpc()
        return None if rpc is None else await rpc.code()

    async def details(self) -> str | None:
        if self._error is not None:
            return self._error.details()
        rpc = self._rpc()
        return None if rpc is None else await rpc.details()

    async def debug_error_string(self) -> str | None:
        return None

    async def wait_for_connection(self) -> None:
        rpc = self._rpc()
        if rpc is not None:
            await rpc.wait_for_connection()

    async def write(self, request: Any) -> None:
        raise NotImplementedError("pass the requests as an iterator: stub.Method(iterator)")

    async def done_writing(self) -> None:
        raise NotImplementedError("pass the requests as an iterator: stub.Method(iterator)")
