"""The asyncio server side: the server stack around async servicers, on grpc.aio.

The stack is an async chain: the servicer's coroutine is awaited, its async generator
iterated. A servicer's ``await context.abort(...)`` (or ``set_code``) becomes a status
inside the stack, so middleware see the real status, and grpc.aio then gets the
servicer's own outcome back; a status a middleware raises is sent with ``context.abort``.

A request that does not deserialize runs through the stack too (see ``server``), rather
than ending in grpc.aio's UNKNOWN with the parser's exception text: a unary request is
parsed by the entry, a request stream's messages by a deserializer that raises
``UndecodableRequestError`` for one that does not parse, so that ``context.read()`` still
returns messages.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from resilience.apps.servicers import require_async
from resilience.core.call import Call, CallKind
from resilience.core.errors import RpcStatusError
from resilience.core.middleware import Handler
from resilience.transport.server import (
    ServicerStatus,
    StackInterceptor,
    UndecodableRequest,
    UndecodableRequestError,
    make_call,
    raised,
    request_parser,
    returned,
)

#: Set while the entry resumes a stream whose client has gone, for the terminal to end it.
_STOPPING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "resilience_stream_stopping", default=False
)
_stopping = _STOPPING.get
_monotonic = time.monotonic


def _past(deadline: float | None) -> bool:
    """Has the deadline passed? On grpc.aio a client that goes away earlier cancels the
    handler (CancelledError), which middleware read with ``ended_status``."""
    return deadline is not None and _monotonic() >= deadline


def _terminal(behavior: Callable[[Any, Any], Any], kind: CallKind) -> Handler:
    """The stack's innermost layer: the servicer, whose every non-OK end reaches the
    middleware as the status its client gets (``raised``, ``returned``)."""
    if kind.response_streaming:

        async def stream(call: Call) -> AsyncIterator[Any]:
            if call.request.__class__ is UndecodableRequest:
                raise call.request.refuse(call)
            stopped = False
            try:
                responses = behavior(call.request, call.context)
                async for response in responses:
                    yield response
                    if _stopping():
                        stopped = True  # the client has gone: end as grpc would
                        break
            except Exception as exc:
                if (failed := raised(call, exc, _past(call.deadline))) is None:
                    raise
                raise failed from exc
            if stopped:
                await responses.aclose()
            status = returned(call, None, stopped or _past(call.deadline))
            if status is not None:
                raise status

        return stream

    async def unary(call: Call) -> Any:
        context = call.context
        request = call.request
        if request.__class__ is UndecodableRequest:  # one comparison, no frame
            raise request.refuse(call)
        try:
            response = await behavior(request, context)
        except Exception as exc:
            if (failed := raised(call, exc, _past(call.deadline))) is None:
                raise
            raise failed from exc
        deadline = call.deadline
        if context.code() is None and (deadline is None or _monotonic() < deadline):
            return response
        status = returned(call, response, _past(deadline))
        if status is None:
            return response
        raise status

    return unary


async def _abort(context: grpc.aio.ServicerContext, exc: RpcStatusError) -> None:
    """Send the status; grpc.aio's AbortError then ends the handler. If the servicer's own
    abort already sent it (grpc.aio refuses a second one), the handler just ends."""
    if context.done():
        return
    if exc.trailing_metadata():
        context.set_trailing_metadata(exc.trailing_metadata())
    await context.abort(exc.code(), exc.details())


async def _replay(context: grpc.aio.ServicerContext, status: ServicerStatus) -> Any:
    """Give grpc.aio what the servicer gave: its response, or the exception it raised."""
    error = status.error
    if error is None:
        return status.response
    if isinstance(error, RpcStatusError):
        return await _abort(context, error)
    raise error


async def _stop(responses: AsyncIterator[Any]) -> None:
    """A stream's write failed because its client has gone: resume the stack once, so that
    the terminal ends it with the client's status through every layer's error path, while
    the call is still there to read. A stack that answers anyway is closed instead."""
    token = _STOPPING.set(True)
    try:
        await anext(responses)
    except (StopAsyncIteration, grpc.RpcError):
        return
    finally:
        _STOPPING.reset(token)
    aclose = getattr(responses, "aclose", None)
    if aclose is not None:
        await aclose()


def strict_deserializer(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """A request stream's deserializer for grpc.aio, which calls it for each message the
    servicer reads (iterating or with ``context.read()``): a message that does not parse
    raises ``UndecodableRequestError`` there, an INTERNAL status the stack and the client
    see, rather than the parser's own error (UNKNOWN, with its text)."""

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            raise UndecodableRequestError() from None

    return parse


def _entry(chain: Handler, method: str, kind: CallKind, parse: Callable[[bytes], Any] | None
           ) -> Callable[[Any, Any], Any]:
    """The coroutine grpc.aio runs per RPC. A unary request arrives as bytes and is parsed
    here (``parse``); a request stream arrives parsed (``parse`` is None). A response
    stream is written here rather than yielded to grpc, which would abandon the stack,
    unfinished, to the garbage collector when its client goes; the stack is ended before
    the call is."""
    if kind.response_streaming:

        async def serve_stream(data: Any, context: Any) -> None:
            request = data
            if parse is not None:
                try:
                    request = parse(data)
                except Exception as exc:
                    request = UndecodableRequest(data, exc)
            status = None
            try:
                responses = aiter(chain(make_call(method, kind, request, context)))
                async for response in responses:
                    try:
                        await context.write(response)
                    except BaseException:
                        await _stop(responses)
                        raise
            except ServicerStatus as exc:
                status = exc
            except RpcStatusError as exc:
                await _abort(context, exc)
            if status is not None:
                await _replay(context, status)

        return serve_stream

    async def serve(data: Any, context: Any) -> Any:
        request = data
        if parse is not None:
            try:
                request = parse(data)
            except Exception as exc:
                request = UndecodableRequest(data, exc)
        try:
            return await chain(make_call(method, kind, request, context))
        except ServicerStatus as exc:
            status = exc
        except RpcStatusError as exc:
            return await _abort(context, exc)
        return await _replay(context, status)

    return serve


class AioChainInterceptor(StackInterceptor, grpc.aio.ServerInterceptor):
    """The asyncio server's interceptor: app methods run through the async server stack."""

    is_async = True

    def _terminal(self, method: str, behavior: Callable[[Any, Any], Any], kind: CallKind
                  ) -> Handler:
        require_async(method, behavior, kind)
        return _terminal(behavior, kind)

    def _entry(self, chain: Handler, method: str, kind: CallKind,
               deserializer: Callable[[bytes], Any] | None) -> Callable[[Any, Any], Any]:
        return _entry(chain, method, kind,
                      None if kind.request_streaming else request_parser(deserializer))

    def _request_deserializer(self, kind: CallKind, deserializer: Callable[[bytes], Any] | None
                              ) -> Callable[[bytes], Any] | None:
        """None for a unary request, which the entry parses; for a request stream, a
        deserializer that answers a bad message with INTERNAL (``strict_deserializer``)."""
        if kind.request_streaming and deserializer is not None:
            return strict_deserializer(deserializer)
        return None

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        full = handler_call_details.method
        try:
            return self._wrapped[full]
        except KeyError:
            return self._stacked(full, await continuation(handler_call_details))
