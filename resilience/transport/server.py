"""The server side: one interceptor that runs every app method through the server stack.

Each method's stack is built on its first call and kept, so the per-call cost is a dict
lookup plus the stack. Health and reflection are not app methods and bypass the stack, so
a saturated server still answers its health checks.

A stacked method is registered with grpc without its request deserializer: the entry
parses the request itself, so that a request that does not parse still runs through the
stack (as an ``UndecodableRequest``, which the terminal answers with grpcio's sync
server's INTERNAL instead of calling the servicer) and every layer sees it and its
status. grpc would answer it before any handler runs: the sync server with INTERNAL
unseen by the stack, grpc.aio with UNKNOWN and the text of the parser's exception.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Container, Iterable, Iterator
from typing import Any, ClassVar

import grpc
import structlog

# The sync server's per-call state: what the stack reads on the happy path (pinned by
# tests/integration/test_server_status.py), since grpc's code() and is_active() cost three frames.
from grpc._server import _CANCELLED

from resilience.conf.factory import ChainFactory
from resilience.core.call import Call, CallKind
from resilience.core.errors import RpcStatusError, cancelled_status
from resilience.core.middleware import Handler

log = structlog.get_logger(__name__)

# ServicerContext.time_remaining() reports a deadline-less call as decades away.
_NO_DEADLINE = 1e8
_monotonic = time.monotonic

_HANDLER_FACTORIES: dict[CallKind, Callable[..., grpc.RpcMethodHandler]] = {
    CallKind.UNARY_UNARY: grpc.unary_unary_rpc_method_handler,
    CallKind.UNARY_STREAM: grpc.unary_stream_rpc_method_handler,
    CallKind.STREAM_UNARY: grpc.stream_unary_rpc_method_handler,
    CallKind.STREAM_STREAM: grpc.stream_stream_rpc_method_handler,
}


#: What grpcio's sync server tells a client whose request it cannot deserialize, with
#: INTERNAL (gRPC's status for "error parsing request proto"): no parser text reaches it.
UNDECODABLE_DETAILS = "Exception deserializing request!"


class UndecodableRequestError(RpcStatusError):
    """INTERNAL for a request message the method's deserializer refused, as grpcio's sync
    server answers it. Raised by the terminal for an ``UndecodableRequest``, and into the
    servicer by a request stream whose next message does not parse."""

    def __init__(self) -> None:
        super().__init__(grpc.StatusCode.INTERNAL, UNDECODABLE_DETAILS, retryable=False)


class UndecodableRequest:
    """``call.request`` of a call whose request did not deserialize: the bytes that came
    and the parser's error (for the server's log, never the client). Middleware see the
    call as any other; the terminal answers it with ``UndecodableRequestError`` and never
    calls the servicer. A middleware that reads request fields must check for it."""

    __slots__ = ("data", "error")

    def __init__(self, data: bytes, error: Exception) -> None:
        self.data = data
        # Without its traceback, which holds the entry's frame, which holds this.
        self.error = error.with_traceback(None)

    def refuse(self, call: Call) -> UndecodableRequestError:
        """The terminal's answer, logged with what the parser said."""
        log.info("request_undecodable", method=call.method, size=len(self.data),
                 error=f"{type(self.error).__name__}: {self.error}")
        return UndecodableRequestError()

    def __repr__(self) -> str:
        return f"<UndecodableRequest {len(self.data)} bytes: {self.error!r}>"


def request_parser(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    """What an entry parses a request with: the method's deserializer, or, for a method
    registered without one, ``bytes``, which returns the bytes object it is given (a C
    call: no frame on the per-call path)."""
    return bytes if deserializer is None else deserializer


def parsed_stream(requests: Iterable[bytes], parse: Callable[[bytes], Any]
                  ) -> Iterator[Any]:
    """A sync request stream, each message parsed; one that does not parse raises
    ``UndecodableRequestError`` into the servicer, which ends the call with it unless the
    servicer catches it (grpcio's sync server would answer INTERNAL then, unseen)."""
    for data in requests:
        try:
            request = parse(data)
        except Exception:
            raise UndecodableRequestError() from None
        yield request


def _behavior(handler: grpc.RpcMethodHandler, kind: CallKind) -> Callable[[Any, Any], Any]:
    return {
        CallKind.UNARY_UNARY: handler.unary_unary,
        CallKind.UNARY_STREAM: handler.unary_stream,
        CallKind.STREAM_UNARY: handler.stream_unary,
        CallKind.STREAM_STREAM: handler.stream_stream,
    }[kind]


class ServicerStatus(RpcStatusError):
    """The status a servicer's own outcome gives its client, raised inside the stack so
    that middleware see it: a code the servicer set (``set_code``, ``abort``, a generated
    base class's UNIMPLEMENTED) before it returned or raised, or the end its client's
    departure meant. The entry hands the outcome itself back to grpc (``response``
    returned, or ``error`` raised), which then answers exactly as it does without a stack.
    """

    def __init__(self, code: grpc.StatusCode, details: str, *,
                 error: BaseException | None = None, response: Any = None) -> None:
        super().__init__(code, details)
        self.error = error
        self.response = response


_GONE_DETAILS = {
    grpc.StatusCode.DEADLINE_EXCEEDED: "the call's deadline passed before the servicer ended",
    grpc.StatusCode.CANCELLED: "the client cancelled the call before the servicer ended",
}


def _set_status(call: Call, gone: bool) -> tuple[grpc.StatusCode, str] | None:
    """The non-OK status the servicer's client gets: the code the servicer set, or the
    client's own end if it has ``gone``, which takes precedence (grpc sends nothing then)."""
    if gone:
        code = cancelled_status(call.deadline)
        return code, _GONE_DETAILS[code]
    context = call.context
    code = context.code()
    if code is None or code is grpc.StatusCode.OK:
        return None
    details = context.details() or ""
    if isinstance(details, bytes):
        details = details.decode("utf-8", "replace")
    return code, details


def raised(call: Call, exc: Exception, gone: bool) -> ServicerStatus | None:
    """What the stack sees of a servicer that raised ``exc``: the status grpc will send for
    it, or None to pass ``exc`` as it is (a status of our own, or any other error, which
    is UNKNOWN). An RpcError from another call would otherwise read as that call's status.
    """
    if isinstance(exc, RpcStatusError) and not gone:
        return None
    status = _set_status(call, gone)
    if status is not None:
        return ServicerStatus(*status, error=exc)
    if isinstance(exc, grpc.RpcError):
        return ServicerStatus(grpc.StatusCode.UNKNOWN, str(exc), error=exc)
    return None


def returned(call: Call, response: Any, gone: bool) -> ServicerStatus | None:
    """What the stack sees of a servicer that returned: None for OK, else its status."""
    status = _set_status(call, gone)
    return None if status is None else ServicerStatus(*status, response=response)


def _gone(call: Call) -> bool:
    """Has the sync server's client gone (cancelled, or out of time)?"""
    deadline = call.deadline
    return call.context._state.client is _CANCELLED or (
        deadline is not None and _monotonic() >= deadline
    )


def _terminal(behavior: Callable[[Any, Any], Any], kind: CallKind) -> Handler:
    """The stack's innermost layer: the servicer, whose every non-OK end reaches the
    middleware as the status its client gets (``raised``, ``returned``)."""
    if kind.response_streaming:

        def stream(call: Call) -> Iterator[Any]:
            if call.request.__class__ is UndecodableRequest:
                raise call.request.refuse(call)
            state = call.context._state
            stopped = False
            try:
                responses = iter(behavior(call.request, call.context))
                for response in responses:
                    yield response
                    if state.client is _CANCELLED:
                        stopped = True  # grpc asks for no more: end as it would
                        break
            except Exception as exc:
                if (failed := raised(call, exc, _gone(call))) is None:
                    raise
                raise failed from exc
            if stopped:
                close = getattr(responses, "close", None)
                if close is not None:
                    close()
            status = returned(call, None, stopped or _gone(call))
            if status is not None:
                raise status

        return stream

    def unary(call: Call) -> Any:
        context = call.context
        request = call.request
        if request.__class__ is UndecodableRequest:  # one comparison, no frame
            raise request.refuse(call)
        try:
            response = behavior(request, context)
        except Exception as exc:
            if (failed := raised(call, exc, _gone(call))) is None:
                raise
            raise failed from exc
        # grpc's own state rather than code() and is_active(): no frames on the happy path.
        state = context._state
        deadline = call.deadline
        if state.code is None and state.client is not _CANCELLED and (
            deadline is None or _monotonic() < deadline
        ):
            return response
        status = returned(call, response, _gone(call))
        if status is None:
            return response
        raise status

    return unary


def _abort(context: Any, exc: RpcStatusError) -> None:
    if exc.trailing_metadata():
        context.set_trailing_metadata(exc.trailing_metadata())
    context.abort(exc.code(), exc.details())


def _replay(context: Any, status: ServicerStatus) -> Any:
    """Give grpc what the servicer gave: its response, or the exception it raised."""
    error = status.error
    if error is None:
        return status.response
    if isinstance(error, RpcStatusError):
        _abort(context, error)
    raise error


def _stop(responses: Iterator[Any]) -> None:
    """grpc stopped reading a stream because its client has gone: resume the stack once,
    so that the terminal ends it with the client's status through every layer's error
    path. A stack that answers anyway (not from the servicer) is closed instead."""
    try:
        next(responses)
    except (StopIteration, grpc.RpcError):
        return
    close = getattr(responses, "close", None)
    if close is not None:
        close()


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


def _entry(chain: Handler, method: str, kind: CallKind,
           deserializer: Callable[[bytes], Any] | None) -> Callable[[Any, Any], Any]:
    """The function grpc calls per RPC: parse the request (grpc hands over its bytes), build
    the Call, run the stack, report its status."""
    if kind.request_streaming:
        return _stream_request_entry(chain, method, kind, deserializer)
    parse = request_parser(deserializer)
    if kind.response_streaming:

        def serve_stream(data: bytes, context: Any) -> Iterator[Any]:
            try:
                request = parse(data)
            except Exception as exc:
                request = UndecodableRequest(data, exc)
            status = None
            try:
                responses = iter(chain(make_call(method, kind, request, context)))
                # Not ``yield from``, which would close the stack when grpc drops this.
                for response in responses:  # noqa: UP028
                    yield response
            except GeneratorExit:
                _stop(responses)
                raise
            except ServicerStatus as exc:
                status = exc
            except RpcStatusError as exc:
                _abort(context, exc)
            if status is not None:
                _replay(context, status)

        return serve_stream

    def serve(data: bytes, context: Any) -> Any:
        # Parsed here rather than by grpc: no more frames than grpc's own parse step.
        try:
            request = parse(data)
        except Exception as exc:
            request = UndecodableRequest(data, exc)
        try:
            return chain(make_call(method, kind, request, context))
        except ServicerStatus as exc:
            status = exc
        except RpcStatusError as exc:
            return _abort(context, exc)
        return _replay(context, status)

    return serve


def _stream_request_entry(chain: Handler, method: str, kind: CallKind,
                          parse: Callable[[bytes], Any] | None) -> Callable[[Any, Any], Any]:
    """``_entry`` for a request stream, whose messages are parsed as the servicer reads
    them (``parsed_stream``), unless the method takes raw bytes (``parse`` is None)."""
    # C callables either way, so no frame per call: grpc's request iterator is its own iter.
    requests_of: Callable[[Iterable[bytes]], Iterable[Any]] = (
        iter if parse is None else functools.partial(parsed_stream, parse=parse)
    )

    if kind.response_streaming:

        def serve_stream(requests: Iterable[bytes], context: Any) -> Iterator[Any]:
            status = None
            try:
                responses = iter(chain(make_call(method, kind, requests_of(requests), context)))
                for response in responses:  # noqa: UP028 (see _entry)
                    yield response
            except GeneratorExit:
                _stop(responses)
                raise
            except ServicerStatus as exc:
                status = exc
            except RpcStatusError as exc:
                _abort(context, exc)
            if status is not None:
                _replay(context, status)

        return serve_stream

    def serve(requests: Iterable[bytes], context: Any) -> Any:
        try:
            return chain(make_call(method, kind, requests_of(requests), context))
        except ServicerStatus as exc:
            status = exc
        except RpcStatusError as exc:
            return _abort(context, exc)
        return _replay(context, status)

    return serve


class StackInterceptor:
    """What the sync and the asyncio interceptor share: each app method's handler wrapped
    in the server stack on its first call, and kept; other methods pass through.

    ``target`` is the address middleware are told they serve; set it once bound.
    Subclasses say how the stack calls the servicer (``_terminal``) and how grpc calls the
    stack (``_entry``).
    """

    is_async: ClassVar[bool] = False

    def __init__(self, factory: ChainFactory, methods: Container[str]) -> None:
        self._factory = factory
        self._methods = methods
        self._lock = threading.Lock()
        self._wrapped: dict[str, grpc.RpcMethodHandler | None] = {}
        #: The middleware each method's stack is made of, outermost first.
        self.middleware = factory.middleware

    @property
    def target(self) -> str:
        """The address middleware are told they serve, set once the server is bound."""
        return self._factory.target

    @target.setter
    def target(self, address: str) -> None:
        self._factory.target = address

    def _terminal(self, method: str, behavior: Callable[[Any, Any], Any], kind: CallKind
                  ) -> Handler:
        raise NotImplementedError

    def _entry(self, chain: Handler, method: str, kind: CallKind,
               deserializer: Callable[[bytes], Any] | None) -> Callable[[Any, Any], Any]:
        raise NotImplementedError

    def _request_deserializer(self, kind: CallKind, deserializer: Callable[[bytes], Any] | None
                              ) -> Callable[[bytes], Any] | None:
        """The deserializer grpc is given for the stacked method: none, so that grpc hands
        the request's bytes to the entry, which parses them inside the stack."""
        return None

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
        chain = self._factory.build(
            method, kind, self._terminal(method, _behavior(handler, kind), kind)
        )
        deserializer = handler.request_deserializer
        return _HANDLER_FACTORIES[kind](
            self._entry(chain, method, kind, deserializer),
            request_deserializer=self._request_deserializer(kind, deserializer),
            response_serializer=handler.response_serializer,
        )


class ChainInterceptor(StackInterceptor, grpc.ServerInterceptor):
    """The sync server's interceptor: app methods run through the server stack."""

    def _terminal(self, method: str, behavior: Callable[[Any, Any], Any], kind: CallKind
                  ) -> Handler:
        return _terminal(behavior, kind)

    def _entry(self, chain: Handler, method: str, kind: CallKind,
               deserializer: Callable[[bytes], Any] | None) -> Callable[[Any, Any], Any]:
        return _entry(chain, method, kind, deserializer)

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        full = handler_call_details.method
        try:
            return self._wrapped[full]
        except KeyError:
            return self._stacked(full, continuation(handler_call_details))
