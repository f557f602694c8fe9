"""One structured log line per RPC, on either side: the access log of a gRPC service.

Only the method, status, duration, peer and attempt are logged; never payloads or
metadata, which may carry personal data or credentials.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
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

    def __init__(self, handler: Handler, options: MiddlewareOptions, info: ChainInfo) -> None:
        super().__init__(handler, options, info)
        self._server = info.side == "server"
        self._streaming = info.kind.response_streaming

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

    def _ok_code(self, call: Call) -> grpc.StatusCode:
        """OK, unless a server handler returned normally after ``context.set_code(...)``, or
        after its client had gone (the deadline passed, or the call was cancelled): the
        client never saw that answer."""
        if self._server:
            context = call.context
            code = context.code()
            if code is not None:
                return code
            if not context.is_active():
                remaining = call.time_remaining()
                if remaining is not None and remaining <= 0:
                    return grpc.StatusCode.DEADLINE_EXCEEDED
                return grpc.StatusCode.CANCELLED
        return grpc.StatusCode.OK

    def _error_code(self, call: Call, exc: BaseException) -> grpc.StatusCode:
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
