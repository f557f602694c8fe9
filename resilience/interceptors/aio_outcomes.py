"""What an asyncio intercepted call returns: a call object rather than a bare response, so
that grpc.aio's intercepted call can answer for its metadata and status."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio

from resilience.core.call import Call
from resilience.interceptors.chains import CONTINUATION
from resilience.transport.aio_calls import AioStreamCall


class AioDone(grpc.aio.UnaryUnaryCall, grpc.aio.StreamUnaryCall):
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


class AioStream(AioStreamCall):
    """A response stream through the async chain, as the channel's own (``AioStreamCall``).
    Each read runs with the continuation in context, since a layer may start another
    attempt (Retry) from inside a read, in the reader's task."""

    def __init__(self, responses: Any, call: Call, continuation: Callable[..., Any],
                 error: BaseException | None = None) -> None:
        self._continuation = continuation
        super().__init__(responses, call.context, call.deadline, error)

    async def __anext__(self) -> Any:
        token = CONTINUATION.set(self._continuation)
        try:
            return await super().__anext__()
        finally:
            CONTINUATION.reset(token)
