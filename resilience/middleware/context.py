"""Give every RPC a request id and bind it, with the attempt number, into structlog's
context on both sides of the wire, so that every log line of one call (client retries and
server attempts alike) can be found with one id.

The client takes the id from its caller (an ``x-request-id`` already in the call's
metadata, or a ``request_id`` already bound in structlog's contextvars, as in a server
handler that calls another service), or makes one, and sends it in metadata. The client
transport adds ``x-resilience-attempt`` to every attempt after the first. The server reads
both (a missing attempt is 1) and binds them for the RPC.

Bindings are made with the ContextVars structlog itself uses and reset with their tokens
when the call ends. For response streams they are made around each step of the stream
(each ``next``, ``close``), since the consumer may read it from anywhere: nothing is ever
left bound in the caller's thread or task. The id is the only metadata value ever logged;
an incoming one that is too long or holds characters outside a safe set is replaced.
"""

from __future__ import annotations

import contextvars
import dataclasses
import os
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import structlog

from resilience.core.call import ATTEMPT_KEY, Call
from resilience.core.middleware import ChainInfo, Handler, Middleware, MiddlewareOptions, option

#: Longest incoming request id kept; a longer one is replaced by a fresh id.
MAX_ID_LENGTH = 128
_SAFE_ID = re.compile(rf"[A-Za-z0-9._:/+=@-]{{1,{MAX_ID_LENGTH}}}").fullmatch
#: Longest ``x-resilience-attempt`` value read; a longer or non-numeric one reads as 1.
_MAX_ATTEMPT_DIGITS = 4


def _structlog_var(key: str) -> contextvars.ContextVar[Any]:
    """The ContextVar structlog binds ``key`` in, found through its public API (a token's
    ``var``), so that a call binds with one ``set`` and unbinds with one ``reset``."""
    tokens = structlog.contextvars.bind_contextvars(**{key: ...})
    structlog.contextvars.reset_contextvars(**tokens)
    return tokens[key].var


REQUEST_ID = _structlog_var("request_id")
ATTEMPT = _structlog_var("attempt")


def new_request_id() -> str:
    """128 random bits in hex, as ``uuid4().hex`` but a quarter of its cost."""
    return os.urandom(16).hex()


def valid_request_id(value: Any) -> str | None:
    """``value`` as a request id if it is one we are willing to log and send, else None."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return value if isinstance(value, str) and _SAFE_ID(value) else None


def parse_attempt(value: Any) -> int:
    """The attempt number an ``x-resilience-attempt`` value says; 1 if absent or bad."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str) and value.isascii() and value.isdigit() and (
        len(value) <= _MAX_ATTEMPT_DIGITS
    ):
        return max(1, int(value))
    return 1


def rebind_attempt(attempt: int) -> None:
    """Bind ``attempt`` for the rest of the current call, if a RequestContext bound one.

    Retry calls this before each retry, so that lines logged by the layers below it carry
    the attempt they belong to. RequestContext's reset restores the caller's value, so
    nothing is left behind; without a RequestContext nothing is bound here.
    """
    if ATTEMPT.get() is not ...:
        ATTEMPT.set(attempt)


class _Bound:
    """Bind a request id and an attempt around one step of a call, and unbind after."""

    __slots__ = ("attempt", "request_id")

    def __init__(self, request_id: str, attempt: int) -> None:
        self.request_id = request_id
        self.attempt = attempt

    def run(self, fn: Any, *args: Any) -> Any:
        id_token = REQUEST_ID.set(self.request_id)
        attempt_token = ATTEMPT.set(self.attempt)
        try:
            return fn(*args)
        finally:
            ATTEMPT.reset(attempt_token)
            REQUEST_ID.reset(id_token)


class BoundIterator:
    """A response stream whose every step (``next``, ``close``) runs with the bindings."""

    __slots__ = ("_bound", "_responses")

    def __init__(self, responses: Any, bound: _Bound) -> None:
        self._bound = bound
        self._responses = iter(responses)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        return self._bound.run(next, self._responses)

    def close(self) -> None:
        close = getattr(self._responses, "close", None)
        if close is not None:
            self._bound.run(close)

    def cancel(self) -> bool:
        """grpc's ``cancel`` on a client stream, passed through when the layer below has it."""
        cancel = getattr(self._responses, "cancel", None)
        return bool(cancel is not None and self._bound.run(cancel))


class AsyncBoundIterator:
    """``BoundIterator`` for asyncio: each ``anext`` and ``aclose`` runs with the bindings,
    set and reset in the task that awaits it."""

    __slots__ = ("_bound", "_responses")

    def __init__(self, responses: Any, bound: _Bound) -> None:
        self._bound = bound
        self._responses = aiter(responses)  # a grpc.aio stream call is iterable, not an iterator

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        id_token = REQUEST_ID.set(self._bound.request_id)
        attempt_token = ATTEMPT.set(self._bound.attempt)
        try:
            return await anext(self._responses)
        finally:
            ATTEMPT.reset(attempt_token)
            REQUEST_ID.reset(id_token)

    async def aclose(self) -> None:
        aclose = getattr(self._responses, "aclose", None)
        if aclose is None:
            return
        id_token = REQUEST_ID.set(self._bound.request_id)
        attempt_token = ATTEMPT.set(self._bound.attempt)
        try:
            await aclose()
        finally:
            ATTEMPT.reset(attempt_token)
            REQUEST_ID.reset(id_token)


class RequestContext(Middleware):
    """Carry a request id across the wire and bind it, with the attempt number, into
    structlog's contextvars for the call. List it first (outermost) on both sides."""

    async_capable = True

    @dataclasses.dataclass(frozen=True)
    class Options(MiddlewareOptions):
        header: str = option("x-request-id", "Metadata key that carries the request id.")
        keep_caller_id: bool = option(
            True,
            "Keep an id the caller gave (client: in the call's metadata or structlog's "
            "context; server: in the request's metadata) rather than always making one. "
            "Turn it off on a server whose clients are not trusted to choose ids.",
        )

        def validate(self) -> list[str]:
            header = self.header
            if not header or header != header.lower() or header.endswith("-bin") or (
                header.startswith("grpc-") or header == ATTEMPT_KEY
            ):
                return [
                    f"header is {header!r}; expected a lower-case metadata key not ending in "
                    f"'-bin', not starting with 'grpc-' and not {ATTEMPT_KEY!r}, such as "
                    f"'x-request-id'"
                ]
            return []

    options: Options

    def __init__(self, handler: Handler, options: MiddlewareOptions, info: ChainInfo) -> None:
        super().__init__(handler, options, info)
        opts = cast(RequestContext.Options, options)
        self._header = opts.header
        self._keep = opts.keep_caller_id
        server = info.side == "server"
        self._enter = self._server_enter if server else self._client_enter
        self._streaming = info.kind.response_streaming
        self.acall = self._astream if self._streaming else self._aunary

    def _client_enter(self, call: Call) -> tuple[Call, str, int]:
        """The call to pass down (with the id in its metadata) and what to bind."""
        header = self._header
        if self._keep:
            for key, value in call.metadata:
                if key == header:
                    request_id = valid_request_id(value)
                    if request_id is not None:
                        return call, request_id, call.attempt
                    break
            request_id = valid_request_id(REQUEST_ID.get()) or new_request_id()
        else:
            request_id = new_request_id()
        metadata = tuple(item for item in call.metadata if item[0] != header)
        return call.replace(metadata=(*metadata, (header, request_id))), request_id, call.attempt

    def _server_enter(self, call: Call) -> tuple[Call, str, int]:
        """The call to pass down (with the client's attempt number) and what to bind."""
        header = self._header
        request_id = None
        attempt = 1
        for key, value in call.metadata:
            if key == header:
                if self._keep:
                    request_id = valid_request_id(value)
            elif key == ATTEMPT_KEY:
                attempt = parse_attempt(value)
        if request_id is None:
            request_id = new_request_id()
        if attempt != call.attempt:
            call = call.replace(attempt=attempt)
        return call, request_id, attempt

    def __call__(self, call: Call) -> Any:
        if self._streaming:
            return self._stream(call)
        call, request_id, attempt = self._enter(call)
        id_token = REQUEST_ID.set(request_id)
        attempt_token = ATTEMPT.set(attempt)
        try:
            return self.handler(call)
        finally:
            ATTEMPT.reset(attempt_token)
            REQUEST_ID.reset(id_token)

    def _stream(self, call: Call) -> BoundIterator:
        call, request_id, attempt = self._enter(call)
        bound = _Bound(request_id, attempt)
        return BoundIterator(bound.run(self.handler, call), bound)

    async def _aunary(self, call: Call) -> Any:
        call, request_id, attempt = self._enter(call)
        id_token = REQUEST_ID.set(request_id)
        attempt_token = ATTEMPT.set(attempt)
        try:
            return await self.handler(call)
        finally:
            ATTEMPT.reset(attempt_token)
            REQUEST_ID.reset(id_token)

    def _astream(self, call: Call) -> AsyncBoundIterator:
        call, request_id, attempt = self._enter(call)
        bound = _Bound(request_id, attempt)
        return AsyncBoundIterator(bound.run(self.handler, call), bound)
