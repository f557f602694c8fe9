"""The server side: one interceptor that runs every app method through the server stack.

Each method's stack is built on its first call and kept, so the per-call cost is a dict
lookup plus the stack. Health and reflection are not app methods and bypass the stack, so
a saturated server still answers its health checks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import grpc

from resilience.conf.chains import ChainResolver
from resilience.core.call import Call, CallKind
from resilience.core.chain import build_chain
from resilience.core.errors import ImproperlyConfigured, RpcStatusError
from resilience.core.middleware import Handler, Middleware
from resilience.metrics.recorder import recorder_for

# ServicerContext.time_remaining() reports a deadline-less call as decades away.
_NO_DEADLINE = 1e8

_HANDLER_FACTORIES: dict[CallKind, Callable[..., grpc.RpcMethodHandler]] = {
    CallKind.UNARY_UNARY: grpc.unary_unary_rpc_method_handler,
    CallKind.UNARY_STREAM: grpc.unary_stream_rpc_method_handler,
    CallKind.STREAM_UNARY: grpc.stream_unary_rpc_method_handler,
    CallKind.STREAM_STREAM: grpc.stream_stream_rpc_method_handler,
}


def _behavior(handler: grpc.RpcMethodHandler, kind: CallKind) -> Callable[[Any, Any], Any]:
    return {
        CallKind.UNARY_UNARY: handler.unary_unary,
        CallKind.UNARY_STREAM: handler.unary_stream,
        CallKind.STREAM_UNARY: handler.stream_unary,
        CallKind.STREAM_STREAM: handler.stream_stream,
    }[kind]


def as_status(context: Any, exc: Exception) -> Exception:
    """A servicer's ``context.abort`` raises an exception that is no RpcError (a bare
    Exception, or grpc.aio's AbortError) after setting the code: turn it into its status."""
    code = context.code()
    if code is None or code is grpc.StatusCode.OK or isinstance(exc, grpc.RpcError):
        return exc
    details = context.details() or b""
    if isinstance(details, bytes):
        details = details.decode("utf-8", "replace")
    return RpcStatusError(code, details)


def _terminal(behavior: Callable[[Any, Any], Any], kind: CallKind) -> Handler:
    if kind.response_streaming:

        def stream(call: Call) -> Iterator[Any]:
            try:
                yield from behavior(call.request, call.context)
            except Exception as exc:
                raise as_status(call.context, exc) from exc

        return stream

    def unary(call: Call) -> Any:
        try:
            return behavior(call.request, call.context)
        except Exception as exc:
            raise as_status(call.context, exc) from exc

    return unary


def _abort(context: Any, exc: RpcStatusError) -> None:
    if exc.trailing_metadata():
        context.set_trailing_metadata(exc.trailing_metadata())
    context.abort(exc.code(), exc.details())


def make_call(method: str, kind: CallKind, request: Any, context: Any) -> Call:
    """The Call of one served RPC. A call without a deadline reports its time remaining as
    decades (sync) or as None (grpc.aio)."""
    remaining = context.time_remaining()
    deadline = (
        None if remaining is None or remaining > _NO_DEADLINE else time.monotonic() + remaining
    )
    return Call(
        method, kind, "server", request,
        metadata=context.invocation_metadata(), deadline=deadline, context=context,
    )


def _entry(chain: Handler, method: str, kind: CallKind) -> Callable[[Any, Any], Any]:
    """The function grpc calls per RPC: build the Call, run the stack, report its status."""
    if kind.response_streaming:

        def serve_stream(request: Any, context: Any) -> Iterator[Any]:
            try:
                yield from chain(make_call(method, kind, request, context))
            except RpcStatusError as exc:
                _abort(context, exc)

        return serve_stream

    def serve(request: Any, context: Any) -> Any:
        try:
            return chain(make_call(method, kind, request, context))
        except RpcStatusError as exc:
            _abort(context, exc)

    return serve


class StackInterceptor:
    """What the sync and the asyncio interceptor share: each app method's handler wrapped
    in the server stack on its first call, and kept; other methods pass through.

    ``target`` is the address middleware are told they serve; set it once bound.
    Subclasses say how the stack calls the servicer (``_terminal``) and how grpc calls the
    stack (``_entry``).
    """

    is_async: ClassVar[bool] = False

    def __init__(self, resolver: ChainResolver, methods: set[str], target: str = "") -> None:
        self._resolver = resolver
        self._methods = methods
        self.target = target
        # The settings, for middleware that need more than their options (REDIS_URL).
        self._shared: dict[str, Any] = {"settings": resolver.settings}
        self._lock = threading.Lock()
        self._wrapped: dict[str, grpc.RpcMethodHandler | None] = {}
        self.middleware: dict[str, list[Middleware]] = {}

    def _terminal(self, method: str, behavior: Callable[[Any, Any], Any], kind: CallKind
                  ) -> Handler:
        raise NotImplementedError

    def _entry(self, chain: Handler, method: str, kind: CallKind) -> Callable[[Any, Any], Any]:
        raise NotImplementedError

    def _stacked(self, full: str, handler: grpc.RpcMethodHandler | None) -> Any:
        """``handler`` (the one grpc found for ``full``) inside the stack, if it is an app's."""
        name = full.lstrip("/")
        if handler is None or name not in self._methods:
            return handler
        with self._lock:
            if full not in self._wrapped:
                self._wrapped[full] = self._wrap(name, handler)
        return self._wrapped[full]

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        kind = CallKind((handler.request_streaming, handler.response_streaming))
        specs = self._resolver.resolve("server", method)
        if errors := [p for p in self._resolver.problems if p.is_error]:
            problems = "; ".join(p.msg for p in errors)
            raise ImproperlyConfigured(f"server stack for {method}: {problems}")
        chain, used = build_chain(
            specs, self._terminal(method, _behavior(handler, kind), kind), method=method,
            kind=kind, side="server", shared=self._shared, target=self.target,
            is_async=self.is_async, idempotent=self._resolver.is_idempotent(method),
            metrics=recorder_for(self._resolver.settings, "server", method),
        )
        self.middleware[method] = used
        return _HANDLER_FACTORIES[kind](
            self._entry(chain, method, kind),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class ChainInterceptor(StackInterceptor, grpc.ServerInterceptor):
    """The sync server's interceptor: app methods run through the server stack."""

    def _terminal(self, method: str, behavior: Callable[[Any, Any], Any], kind: CallKind
                  ) -> Handler:
        return _terminal(behavior, kind)

    def _entry(self, chain: Handler, method: str, kind: CallKind) -> Callable[[Any, Any], Any]:
        return _entry(chain, method, kind)

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        full = handler_call_details.method
        try:
            return self._wrapped[full]
        except KeyError:
            return self._stacked(full, continuation(handler_call_details))
