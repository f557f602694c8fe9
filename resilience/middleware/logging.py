"""One structured log line per RPC, on either side: the access log of a gRPC service.

Only the method, status, duration, peer and attempt are logged; never payloads or
metadata, which may carry personal data or credentials.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import structlog

from resilience.core.call import Call
from resilience.core.errors import status_of
from resilience.core.middleware import ChainInfo, Handler, Middleware, MiddlewareOptions

log = structlog.get_logger(__name__)


class RequestLogging(Middleware):
    """Log ``rpc`` at INFO for OK and at WARNING for any other status, once the call (or
    its response stream) is over."""

    async_capable = True

    def __init__(self, handler: Handler, options: MiddlewareOptions, info: ChainInfo) -> None:
        super().__init__(handler, options, info)
        self._server = info.side == "server"
        self._streaming = info.kind.response_streaming
        self.acall = self._astream if self._streaming else self._aunary

    def __call__(self, call: Call) -> Any:
        start = time.perf_counter()
        try:
            response = self.handler(call)
        except BaseException as exc:
            self._log(call, start, self._error_code(call, exc))
            raise
        if self._streaming:
            return self._watch(call, start, response)
        self._log(call, start, self._ok_code(call))
        return response

    def _watch(self, call: Call, start: float, responses: Any) -> Iterator[Any]:
        """Log when the stream ends; a stream closed early by its consumer is CANCELLED."""
        try:
            yield from responses
        except GeneratorExit:
            self._log(call, start, grpc.StatusCode.CANCELLED)
            raise
        except BaseException as exc:
            self._log(call, start, self._error_code(call, exc))
            raise
        self._log(call, start, self._ok_code(call))

    async def _aunary(self, call: Call) -> Any:
        start = time.perf_counter()
        try:
            response = await self.handler(call)
        except BaseException as exc:
            self._log(call, start, self._error_code(call, exc))
            raise
        self._log(call, start, self._ok_code(call, aio=True))
        return response

    def _astream(self, call: Call) -> AsyncIterator[Any]:
        # Start the clock now, as the sync path does, rather than at the first read.
        return self._awatch(call, time.perf_counter())

    async def _awatch(self, call: Call, start: float) -> AsyncIterator[Any]:
        """``_watch`` for asyncio; the layers below start on the first read."""
        try:
            async for response in self.handler(call):
                yield response
        except GeneratorExit:
            self._log(call, start, grpc.StatusCode.CANCELLED)
            raise
        except BaseException as exc:
            self._log(call, start, self._error_code(call, exc))
            raise
        self._log(call, start, self._ok_code(call, aio=True))

    def _ok_code(self, call: Call, *, aio: bool = False) -> grpc.StatusCode:
        """OK, unless a server handler returned normally after ``context.set_code(...)``, or
        after its client had gone (the deadline passed, or the call was cancelled): the
        client never saw that answer. A grpc.aio context says ``cancelled()`` where a sync
        one says ``not is_active()``."""
        if self._server:
            context = call.context
            code = context.code()
            if code is not None:
                return code
            if context.cancelled() if aio else not context.is_active():
                return self._gone_code(call)
        return grpc.StatusCode.OK

    def _gone_code(self, call: Call) -> grpc.StatusCode:
        """Why a call ended without an answer: its deadline passed, or it was cancelled."""
        remaining = call.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED

    def _error_code(self, call: Call, exc: BaseException) -> grpc.StatusCode:
        if isinstance(exc, asyncio.CancelledError):
            # grpc.aio cancels a server handler whose client went away or ran out of time.
            return self._gone_code(call)
        code = status_of(exc)
        if code is grpc.StatusCode.UNKNOWN and self._server:
            # context.abort() raises a bare Exception after setting the real code.
            return call.context.code() or code
        return code

    def _log(self, call: Call, start: float, code: grpc.StatusCode) -> None:
        method = log.info if code is grpc.StatusCode.OK else log.warning
        method(
            "rpc",
            side=self.info.side,
            method=call.method,
            code=code.name,
            duration_ms=round((time.perf_counter() - start) * 1000, 2),
            peer=call.context.peer() if self._server else self.info.target,
            attempt=call.attempt,
        )
