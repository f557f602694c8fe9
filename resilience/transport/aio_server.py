"""The asyncio server side: the server stack around async servicers, on grpc.aio.

The stack is an async chain: the servicer's coroutine is awaited, its async generator
iterated. A servicer's ``await context.abort(...)`` becomes an ``RpcStatusError`` inside the
stack, so middleware see the real status, and a status that reaches the top is sent with
``context.abort``.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from resilience.core.call import Call, CallKind
from resilience.core.errors import ImproperlyConfigured, RpcStatusError
from resilience.core.middleware import Handler
from resilience.transport.server import StackInterceptor, as_status, make_call


def require_async(method: str, behavior: Callable[..., Any], kind: CallKind) -> None:
    """The aio stack awaits unary servicer methods and iterates streaming ones."""
    if kind.response_streaming:
        if not inspect.isasyncgenfunction(behavior):
            raise ImproperlyConfigured(
                f"servicer method {method} must be an async generator function "
                f"('async def' with 'yield') to run on the asyncio server; handlers that "
                f"stream with context.write() cannot run through a stack"
            )
    elif not inspect.iscoroutinefunction(behavior):
        raise ImproperlyConfigured(
            f"servicer method {method} must be a coroutine function ('async def') to run "
            f"on the asyncio server"
        )


def _terminal(behavior: Callable[[Any, Any], Any], kind: CallKind) -> Handler:
    if kind.response_streaming:

        async def stream(call: Call) -> AsyncIterator[Any]:
            try:
                async for response in behavior(call.request, call.context):
                    yield response
            except Exception as exc:
                raise as_status(call.context, exc) from exc

        return stream

    async def unary(call: Call) -> Any:
        try:
            return await behavior(call.request, call.context)
        except Exception as exc:
            raise as_status(call.context, exc) from exc

    return unary


async def _abort(context: grpc.aio.ServicerContext, exc: RpcStatusError) -> None:
    """Send the status; grpc.aio's AbortError then ends the handler. If the servicer's own
    abort already sent it (grpc.aio refuses a second one), the handler just ends."""
    if context.done():
        return
    if exc.trailing_metadata():
        context.set_trailing_metadata(exc.trailing_metadata())
    await context.abort(exc.code(), exc.details())


def _entry(chain: Handler, method: str, kind: CallKind) -> Callable[[Any, Any], Any]:
    """The coroutine (or async generator) grpc.aio runs per RPC."""
    if kind.response_streaming:

        async def serve_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                async for response in chain(make_call(method, kind, request, context)):
                    yield response
            except RpcStatusError as exc:
                await _abort(context, exc)

        return serve_stream

    async def serve(request: Any, context: Any) -> Any:
        try:
            return await chain(make_call(method, kind, request, context))
        except RpcStatusError as exc:
            await _abort(context, exc)

    return serve


class AioChainInterceptor(StackInterceptor, grpc.aio.ServerInterceptor):
    """The asyncio server's interceptor: app methods run through the async server stack."""

    is_async = True

    def _terminal(self, method: str, behavior: Callable[[Any, Any], Any], kind: CallKind
                  ) -> Handler:
        require_async(method, behavior, kind)
        return _terminal(behavior, kind)

    def _entry(self, chain: Handler, method: str, kind: CallKind) -> Callable[[Any, Any], Any]:
        return _entry(chain, method, kind)

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
