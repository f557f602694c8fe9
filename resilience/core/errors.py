"""Exceptions shared by the framework, and the one place that reads a status from an error."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc

#: gRFC A6 server pushback: trailing metadata telling a client when (in ms) to retry, or
#: with a negative value not to.
PUSHBACK_KEY = "grpc-retry-pushback-ms"
#: A client times its deadline from before it sends the call and its server from when the
#: call arrives, so the client's cancellation can reach the server a little before the
#: server's own deadline: a call that ends this close to its deadline ran out of time.
DEADLINE_SLACK = 0.05


class ImproperlyConfigured(Exception):
    """The settings are wrong; the message names the setting, the value and the fix."""


class MiddlewareNotUsed(Exception):
    """Raised by a middleware factory to leave itself out of the chain being built."""


class RpcStatusError(grpc.RpcError):
    """A gRPC status raised inside a chain.

    It behaves like the errors grpcio raises on the client (``code()``, ``details()``,
    ``trailing_metadata()``), so code that catches ``grpc.RpcError`` keeps working.
    ``retryable=False`` marks a local rejection (an open breaker, say) that a retry
    must not repeat.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str = "",
        *,
        trailing_metadata: tuple[tuple[str, str | bytes], ...] = (),
        retryable: bool = True,
    ) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details
        self._trailing_metadata = trailing_metadata
        self.retryable = retryable

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._trailing_metadata

    def initial_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return ()


class BreakerOpenError(RpcStatusError):
    """A circuit breaker failing fast: UNAVAILABLE, produced locally, never retried."""


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status an exception stands for: its own code, or UNKNOWN for any other error."""
    code: Any = getattr(exc, "code", None)
    if isinstance(exc, grpc.RpcError) and callable(code):
        result = code()
        if isinstance(result, grpc.StatusCode):
            return result
    return grpc.StatusCode.UNKNOWN


def cancelled_status(deadline: float | None) -> grpc.StatusCode:
    """The status of a call whose caller went away before it ended: DEADLINE_EXCEEDED if
    it went at (about) its ``deadline``, a ``time.monotonic()`` value, else CANCELLED."""
    if deadline is not None and time.monotonic() >= deadline - DEADLINE_SLACK:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def ended_status(exc: BaseException, deadline: float | None = None) -> grpc.StatusCode:
    """The status of a call that ended with ``exc``: ``status_of``, except that a stream its
    reader closed early (GeneratorExit) is CANCELLED, and a cancelled task (grpc.aio
    cancels a handler whose client went away or ran out of time) is
    ``cancelled_status(deadline)``."""
    if isinstance(exc, GeneratorExit):
        return grpc.StatusCode.CANCELLED
    if isinstance(exc, asyncio.CancelledError):
        return cancelled_status(deadline)
    return status_of(exc)
