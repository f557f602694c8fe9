"""One structured log line per RPC, on either side: the access log of a gRPC service.

Only the method, status, duration, peer and attempt are logged; never payloads or
metadata, which may carry personal data or credentials.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import structlog

from resilience.core.call import Call
from resilience.core.errors import ended_status
from resilience.core.middleware import ChainInfo, Handler, Middleware, MiddlewareOptions

log = structlog.get_logger(__name__)
_OK = grpc.StatusCode.OK


class RequestLogging(Middleware):
    """Log ``rpc`` at INFO for OK and at WARNING for any other status, once the call (or
    its response stream) is over. On the server the status is what the transport says the
    client got (a code the servicer set, a deadline, a cancellation)."""

    async_capable = True

    def __init__(self, handler: Handler, options: MiddlewareOptions, info: ChainInfo) -> None:
        super().__init__(handler, options, info)
        self._server = info.side == "server"
        self._streaming = info.kind.response_streaming
        self.acall = self._astream if self._streaming else self._aunary

    def __call__(self, call: Call) -> Any:
        start = time.perf_counter()
        # Read now: a servicer context must not be touched once its call is over.
        peer = call.context.peer() if self._server else self.info.target
        try:
            response = self.handler(call)
        except BaseException as exc:
            self._log(call, start, peer, ended_status(exc, call.deadline))
            raise
        if self._streaming:
            return self._watch(call, start, peer, response)
        self._log(call, start, peer, _OK)
        return response

    def _watch(self, call: Call, start: float, peer: str, responses: Any) -> Iterator[Any]:
        """Log when the stream ends; a stream closed early by its consumer is CANCELLED."""
        try:
            yield from responses
        except BaseException as exc:
            self._log(call, start, peer, ended_status(exc, call.deadline))
            raise
        self._log(call, start, peer, _OK)

    async def _aunary(self, call: Call) -> Any:
        start = time.perf_counter()
        peer = call.context.peer() if self._server else self.info.target
        try:
            response = await self.handler(call)
        except BaseException as exc:
            self._log(call, start, peer, ended_status(exc, call.deadline))
            raise
        self._log(call, start, peer, _OK)
        return response

    def _astream(self, call: Call) -> AsyncIterator[Any]:
        # Start the clock now, as the sync path does, rather than at the first read.
        peer = call.context.peer() if self._server else self.info.target
        return self._awatch(call, time.perf_counter(), peer)

    async def _awatch(self, call: Call, start: float, peer: str) -> AsyncIterator[Any]:
        """``_watch`` for asyncio; the layers below start on the first read."""
        try:
            async for response in self.handler(call):
                yield response
        except BaseException as exc:
            self._log(call, start, peer, ended_status(exc, call.deadline))
            raise
        self._log(call, start, peer, _OK)

    def _log(self, call: Call, start: float, peer: str, code: grpc.StatusCode) -> None:
        method = log.info if code is _OK else log.warning
        method(
            "rpc",
            side=self.info.side,
            method=call.method,
            code=code.name,
            duration_ms=round((time.perf_counter() - start) * 1000, 2),
            peer=peer,
            attempt=call.attempt,
        )
