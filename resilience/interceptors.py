"""Plain grpc interceptors built from a settings file, for an existing grpcio application.

No manage.py, no apps: ``server_interceptor()`` runs SERVER_MIDDLEWARE around every method
a ``grpc.server`` serves, and ``client_interceptors()`` runs each method's client chain
(CLIENT_MIDDLEWARE, CLIENT_METHOD_MIDDLEWARE and their options) around every call on a
``grpc.intercept_channel``; the ``aio_`` variants do the same for grpc.aio. The settings are
checked as ``manage.py check`` checks them, and an error raises ImproperlyConfigured with
check's messages.

Each method's client chain is built on its first call and kept by the interceptor, so one
set of interceptors is one "channel": one breaker per method, one retry budget. The
interceptor's ``continuation`` is the chain's terminal. It reaches the terminal through a
context variable rather than the Call, because a chain is built once while the
continuation is new on every call, and context variables follow the call into Hedging's
threads and tasks.
"""

from __future__ import annotations

import collections
import contextvars
import copy
import dataclasses
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import grpc.aio
import structlog
from google.protobuf.descriptor_pb2 import MethodOptions

from resilience.checks import CheckMessage, unique
from resilience.conf.chains import ChainResolver, service_of
from resilience.conf.settings import Settings, load_settings
from resilience.conf.validation import run_checks
from resilience.core.call import Call, CallKind
from resilience.core.chain import build_chain
from resilience.core.errors import ImproperlyConfigured, RpcStatusError, status_of
from resilience.core.middleware import Handler, Middleware
from resilience.transport.aio_server import AioChainInterceptor
from resilience.transport.client import (
    CHANNEL_OPTIONS,
    CallOptions,
    normalise_method,
    remaining_timeout,
)
from resilience.transport.server import ChainInterceptor

__all__ = [
    "CHANNEL_OPTIONS",
    "aio_client_interceptors",
    "aio_server_interceptor",
    "client_interceptors",
    "server_interceptor",
]

log = structlog.get_logger(__name__)

SettingsArg = Settings | str | os.PathLike[str] | None

#: Services the server interceptors leave outside the stack, as runserver does: a
#: saturated server must still answer health checks.
BYPASSED_SERVICES = ("grpc.health.", "grpc.reflection.")

# Stands for "any method" when no installed app names one, so that the default client
# chain is still checked; it reads as the template it is in check's messages.
_ANY_METHOD = "package.Service/Method"

_CONTINUATION: contextvars.ContextVar[Callable[..., Any]] = contextvars.ContextVar(
    "resilience_interceptor_continuation"
)


# --- settings and checks -------------------------------------------------------------------


def _in_mode(settings: Settings, is_async: bool) -> Settings:
    """``settings`` with ASYNCIO set to the interceptor's mode, for the mode checks."""
    if settings.ASYNCIO is is_async:
        return settings
    moded = copy.copy(settings)
    moded.core = dataclasses.replace(settings.core, ASYNCIO=is_async)
    return moded


# Checks that a method name belongs to an installed app, and where their messages quote it.
_METHOD_NAME_CHECKS = {
    "resilience.E008": r"key '(.*?)'",  # CLIENT_METHOD_MIDDLEWARE / CLIENT_METHOD_OPTIONS
    "resilience.E050": r"^'(.*?)' names no method",  # IDEMPOTENT_METHODS
}


def _bad_method_key(key: str, app_services: set[str], app_methods: set[str]) -> bool:
    """E008/E050 for an interceptor: a name that is no method name at all, or a method an
    installed app's service lacks. Other services are the application's own."""
    if "/" not in key and "." not in key:
        return True
    service = service_of(key)
    return service in app_services and key != service and key not in app_methods


def _interceptor_checks(settings: Settings) -> list[CheckMessage]:
    """check's messages, adjusted to interceptors: they serve methods no app declares."""
    apps, messages = run_checks(settings)
    app_methods = set(apps.methods()) if apps is not None else set()
    app_services = {service_of(m) for m in app_methods}
    # Chains no app method made check resolve: the default chains, and each per-method key.
    resolver = ChainResolver(settings)
    if not app_methods:
        resolver.resolve("server", _ANY_METHOD)
        resolver.resolve("client", _ANY_METHOD)
    for table in (settings.CLIENT_METHOD_MIDDLEWARE, settings.CLIENT_METHOD_OPTIONS):
        for key in table:
            if key not in app_methods:
                resolver.resolve("client", key)
    listed = {side: {name.lower() for name in names} for side, names in resolver.listed.items()}
    kept = []
    for message in messages:
        if message.id == "resilience.E010":  # about runserver's servicers, not ours
            continue
        if message.id in _METHOD_NAME_CHECKS:
            found = re.search(_METHOD_NAME_CHECKS[message.id], message.msg)
            if found and not _bad_method_key(found.group(1), app_services, app_methods):
                continue
        if message.id == "resilience.W003":  # unused, unless a chain resolved here lists it
            found = re.search(r"options for '(.*?)', which no (\w+) chain", message.msg)
            if found and found.group(1).lower() in listed[found.group(2)]:
                continue
        kept.append(message)
    return unique(kept + resolver.problems)


def load(settings: SettingsArg = None, *, is_async: bool = False) -> Settings:
    """The settings (a Settings object, a settings file's path, or None for the usual
    lookup: $RESILIENCE_SETTINGS, else settings/settings.toml, in $RESILIENCE_ENV), checked
    as ``manage.py check`` does for the given mode.

    Raises ImproperlyConfigured listing every error; warnings are logged.
    """
    if not isinstance(settings, Settings):
        try:
            settings = load_settings(settings)
        except ImproperlyConfigured as exc:
            raise ImproperlyConfigured(f"ERROR resilience.E000 settings: {exc}") from None
    settings = _in_mode(settings, is_async)
    messages = _interceptor_checks(settings)
    errors = [m for m in messages if m.is_error]
    if errors:
        lines = "\n".join(m.format(settings.env) for m in errors)
        raise ImproperlyConfigured(
            f"{len(errors)} configuration error(s) in {settings.path} "
            f"(environment '{settings.env}'):\n{lines}"
        )
    for message in messages:
        log.warning("settings_warning", id=message.id, setting=message.setting,
                    message=message.msg, hint=message.hint)
    return settings


# --- server --------------------------------------------------------------------------------


class _EveryMethod:
    """The methods the server interceptors wrap: all, except health and reflection."""

    def __contains__(self, method: object) -> bool:
        return not str(method).startswith(BYPASSED_SERVICES)


def server_interceptor(settings: SettingsArg = None) -> grpc.ServerInterceptor:
    """A ``grpc.ServerInterceptor`` running SERVER_MIDDLEWARE around every method of a
    ``grpc.server(..., interceptors=[...])``, one stack per method, built on its first call.
    """
    checked = load(settings, is_async=False)
    return ChainInterceptor(ChainResolver(checked, is_async=False), _EveryMethod())  # type: ignore[arg-type]


def aio_server_interceptor(settings: SettingsArg = None) -> grpc.aio.ServerInterceptor:
    """``server_interceptor`` for ``grpc.aio.server``; servicer methods must be coroutine
    functions (``async def``), or async generators for response streams."""
    checked = load(settings, is_async=True)
    return AioChainInterceptor(ChainResolver(checked, is_async=True), _EveryMethod())  # type: ignore[arg-type]


# --- client: what both modes share ---------------------------------------------------------


def _descriptor_idempotent(request: Any, method: str) -> bool:
    """What the request's own descriptor pool says of the method, for protos loaded into a
    pool other than protobuf's default one."""
    try:
        pool = request.DESCRIPTOR.file.pool
        descriptor = pool.FindMethodByName(method.replace("/", "."))
    except (AttributeError, KeyError):
        return False
    return descriptor.GetOptions().idempotency_level != MethodOptions.IDEMPOTENCY_UNKNOWN


class _Chains:
    """Each method's client chain, built on its first call and kept, under a lock; the
    interceptors of one ``client_interceptors()`` call share it, as methods share a channel.
    """

    def __init__(self, settings: Settings, is_async: bool, target: str,
                 terminal: Callable[[str | bytes, CallKind], Handler]) -> None:
        self._resolver = ChainResolver(settings, is_async=is_async)
        self._is_async = is_async
        self._target = target
        self._terminal = terminal
        self._shared: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._chains: dict[tuple[str | bytes, CallKind], tuple[str, Handler]] = {}
        #: The middleware each method's chain is made of, outermost first.
        self.middleware: dict[str, list[Middleware]] = {}

    def get(self, method: str | bytes, kind: CallKind, request: Any) -> tuple[str, Handler]:
        """(normalised name, chain) of ``method`` as grpc names it (str, or bytes on aio)."""
        try:
            return self._chains[(method, kind)]
        except KeyError:
            pass
        with self._lock:
            built = self._chains.get((method, kind))
            if built is None:
                built = self._build(method, kind, request)
                self._chains[(method, kind)] = built
        return built

    def _build(self, method: str | bytes, kind: CallKind, request: Any) -> tuple[str, Handler]:
        name = normalise_method(method)
        specs = self._resolver.resolve("client", name)
        if errors := [p for p in self._resolver.problems if p.is_error]:
            raise ImproperlyConfigured(
                f"client chain for {name}: {'; '.join(p.msg for p in errors)}"
            )
        idempotent = self._resolver.is_idempotent(name) or (
            not kind.request_streaming and _descriptor_idempotent(request, name)
        )
        chain, used = build_chain(
            specs, self._terminal(method, kind), method=name, kind=kind, side="client",
            shared=self._shared, target=self._target, is_async=self._is_async,
            idempotent=idempotent,
        )
        self.middleware[name] = used
        return name, chain


def _make_call(name: str, kind: CallKind, request: Any, details: Any) -> Call:
    """The Call of one intercepted RPC; call options ride in ``context``, where the
    terminal also leaves the grpc call it made (``capture``)."""
    metadata = getattr(details, "metadata", None)
    timeout = getattr(details, "timeout", None)
    return Call(
        name, kind, "client", request,
        metadata=tuple(metadata) if metadata else (),
        deadline=None if timeout is None else time.monotonic() + timeout,
        context=CallOptions(
            getattr(details, "credentials", None), getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None), capture=True,
        ),
    )


def _captured(call: Call, rpc: Any) -> None:
    opts: CallOptions | None = call.context
    if opts is not None and opts.capture:
        opts.grpc_call = rpc


# --- client: sync --------------------------------------------------------------------------


class _Details(
    collections.namedtuple(
        "_Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                     "compression"),
    ),
    grpc.ClientCallDetails,
):
    """What one attempt hands the continuation: the chain's deadline and metadata."""


def _details(method: str | bytes, call: Call) -> _Details:
    opts: CallOptions = call.context
    return _Details(method, remaining_timeout(call), call.metadata or None,
                    opts.credentials, opts.wait_for_ready, opts.compression)


def _sync_terminal(method: str | bytes, kind: CallKind) -> Handler:
    """One attempt through the interceptor's continuation (a blocking call, so Hedging's
    losing attempts run to their end or deadline instead of being cancelled)."""
    if kind.response_streaming:

        def stream(call: Call) -> Iterator[Any]:
            rpc = _CONTINUATION.get()(_details(method, call), call.request)
            _captured(call, rpc)
            try:
                yield from rpc
            finally:
                rpc.cancel()  # a consumer that stops early must not leave the RPC running

        return stream

    def unary(call: Call) -> Any:
        outcome = _CONTINUATION.get()(_details(method, call), call.request)
        response = outcome.result()  # raises the attempt's RpcError
        _captured(call, outcome)
        return response

    return unary


class _Done(grpc.Call, grpc.Future):
    """A unary call the chain answered: the response, and the status and metadata of the
    attempt that gave it (OK and none when no attempt did, as a fallback answering)."""

    def __init__(self, response: Any, rpc: Any) -> None:
        self._response = response
        self._rpc = rpc

    def initial_metadata(self) -> Any:
        return None if self._rpc is None else self._rpc.initial_metadata()

    def trailing_metadata(self) -> Any:
        return None if self._rpc is None else self._rpc.trailing_metadata()

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK if self._rpc is None else self._rpc.code()

    def details(self) -> str:
        return "" if self._rpc is None else self._rpc.details()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        return self._response

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return None

    def traceback(self, timeout: float | None = None) -> Any:
        return None

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)


class _Failed(grpc.RpcError, grpc.Call, grpc.Future):
    """A call the chain failed with a status of its own (an open breaker, a limit): raises
    it from ``result()`` and from iteration, as grpc's failed calls do."""

    def __init__(self, error: grpc.RpcError) -> None:
        super().__init__(str(error))
        self._error = error

    def initial_metadata(self) -> Any:
        return self._error.initial_metadata()  # type: ignore[attr-defined]

    def trailing_metadata(self) -> Any:
        return self._error.trailing_metadata()  # type: ignore[attr-defined]

    def code(self) -> grpc.StatusCode:
        return status_of(self._error)

    def details(self) -> str:
        return self._error.details()  # type: ignore[attr-defined,no-any-return]

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        raise self._error

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return self._error

    def traceback(self, timeout: float | None = None) -> Any:
        return self._error.__traceback__

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        raise self._error


def _failed(error: grpc.RpcError) -> Any:
    """grpc's own failed calls are already Call and Future; wrap ours."""
    return error if isinstance(error, grpc.Future) else _Failed(error)


class _Stream(grpc.Call):
    """A response stream through the chain, with the Call methods of its current attempt.

    Each ``next()`` runs with the continuation in context, since the chain's layers (and
    so the terminal) are generators that start on the first read.
    """

    def __init__(self, responses: Iterator[Any], call: Call,
                 continuation: Callable[..., Any]) -> None:
        self._responses = responses
        self._opts: CallOptions = call.context
        self._continuation = continuation

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        token = _CONTINUATION.set(self._continuation)
        try:
            return next(self._responses)
        finally:
            _CONTINUATION.reset(token)

    def _rpc(self) -> Any:
        return self._opts.grpc_call

    def cancel(self) -> bool:
        """Cancel the attempt in flight; safe from another thread than the reader's."""
        rpc = self._rpc()
        if rpc is None:
            close = getattr(self._responses, "close", None)
            if close is not None:
                close()
            return True
        return bool(rpc.cancel())

    def is_active(self) -> bool:
        rpc = self._rpc()
        return rpc is not None and bool(rpc.is_active())

    def time_remaining(self) -> float | None:
        rpc = self._rpc()
        return None if rpc is None else rpc.time_remaining()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        rpc = self._rpc()
        return rpc is not None and bool(rpc.add_callback(callback))

    def initial_metadata(self) -> Any:
        rpc = self._rpc()
        return None if rpc is None else rpc.initial_metadata()

    def trailing_metadata(self) -> Any:
        rpc = self._rpc()
        return None if rpc is None else rpc.trailing_metadata()

    def code(self) -> grpc.StatusCode | None:
        rpc = self._rpc()
        return None if rpc is None else rpc.code()

    def details(self) -> str | None:
        rpc = self._rpc()
        return None if rpc is None else rpc.details()


class ClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Runs every call of a ``grpc.intercept_channel`` through its method's client chain.

    ``middleware`` maps each method used so far to its chain's middleware, outermost first.
    """

    def __init__(self, settings: Settings, target: str = "") -> None:
        self._chains = _Chains(settings, False, target, _sync_terminal)
        self.middleware = self._chains.middleware

    def _unary(self, continuation: Any, details: Any, request: Any, kind: CallKind) -> Any:
        name, chain = self._chains.get(details.method, kind, request)
        call = _make_call(name, kind, request, details)
        token = _CONTINUATION.set(continuation)
        try:
            response = chain(call)
        except grpc.RpcError as exc:
            return _failed(exc)
        finally:
            _CONTINUATION.reset(token)
        return _Done(response, call.context.grpc_call)

    def _stream(self, continuation: Any, details: Any, request: Any, kind: CallKind) -> Any:
        name, chain = self._chains.get(details.method, kind, request)
        call = _make_call(name, kind, request, details)
        token = _CONTINUATION.set(continuation)
        try:
            responses = chain(call)
        except grpc.RpcError as exc:
            return _failed(exc)
        finally:
            _CONTINUATION.reset(token)
        return _Stream(responses, call, continuation)

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                              request: Any) -> Any:
        return self._unary(continuation, client_call_details, request, CallKind.UNARY_UNARY)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any,
                               request: Any) -> Any:
        return self._stream(continuation, client_call_details, request, CallKind.UNARY_STREAM)

    def intercept_stream_unary(self, continuation: Any, client_call_details: Any,
                               request_iterator: Any) -> Any:
        return self._unary(
            continuation, client_call_details, request_iterator, CallKind.STREAM_UNARY
        )

    def intercept_stream_stream(self, continuation: Any, client_call_details: Any,
                                request_iterator: Any) -> Any:
        return self._stream(
            continuation, client_call_details, request_iterator, CallKind.STREAM_STREAM
        )


def client_interceptors(settings: SettingsArg = None, *, target: str = ""
                        ) -> list[ClientInterceptor]:
    """Interceptors for ``grpc.intercept_channel(channel, *client_interceptors(...))`` that
    run each method's client chain. Make one set per channel: it holds the channel's
    breakers and retry budget. ``target`` only names the channel in messages and logs.

    Open the channel with ``options=CHANNEL_OPTIONS`` so that grpcio does not retry too.
    """
    return [ClientInterceptor(load(settings, is_async=False), target)]


# --- client: asyncio -----------------------------------------------------------------------


def _aio_error(error: RpcStatusError) -> grpc.aio.AioRpcError:
    """Our status as grpc.aio's error type, which grpc.aio's intercepted calls expect."""
    return grpc.aio.AioRpcError(
        error.code(), grpc.aio.Metadata(),
        grpc.aio.Metadata(*error.trailing_metadata()), error.details(),
    )


def _aio_details(method: str | bytes, call: Call) -> grpc.aio.ClientCallDetails:
    opts: CallOptions = call.context
    return grpc.aio.ClientCallDetails(
        method, remaining_timeout(call), grpc.aio.Metadata(*call.metadata),
        opts.credentials, opts.wait_for_ready,
    )


def _aio_terminal(method: str | bytes, kind: CallKind) -> Handler:
    """One attempt through the continuation; cancelling the awaiting task cancels it."""
    if kind.response_streaming:

        async def stream(call: Call) -> AsyncIterator[Any]:
            rpc = await _CONTINUATION.get()(_aio_details(method, call), call.request)
            _captured(call, rpc)
            try:
                async for response in rpc:
                    yield response
            finally:
                rpc.cancel()

        return stream

    async def unary(call: Call) -> Any:
        rpc = await _CONTINUATION.get()(_aio_details(method, call), call.request)
        response = await rpc
        _captured(call, rpc)
        return response

    return unary


def _refuse_write_style(request_iterator: Any, method: str | bytes) -> None:
    """grpc.aio's ``call.write()`` style feeds requests from an iterator that waits for the
    interceptors to finish, while a chain runs until its call ends: that would deadlock."""
    code = getattr(request_iterator, "ag_code", None)
    if code is not None and code.co_name == "_proxy_writes_as_request_iterator":
        raise NotImplementedError(
            f"{normalise_method(method)}: call.write()/done_writing() cannot run through "
            f"resilience's asyncio interceptors; pass the requests as an iterator instead: "
            f"stub.Method(request_iterator)"
        )


class _AioDone(grpc.aio.StreamUnaryCall):
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


class _AioStream(grpc.aio.UnaryStreamCall, grpc.aio.StreamStreamCall):
    """A response stream through the async chain, with the Call methods of its current
    attempt. Each read runs with the continuation in context, since the chain's layers
    start on the first read, in the reader's task."""

    def __init__(self, responses: AsyncIterator[Any], call: Call,
                 continuation: Callable[..., Any]) -> None:
        self._responses = responses
        self._opts: CallOptions = call.context
        self._continuation = continuation
        self._reader: AsyncIterator[Any] | None = None
        self._error: grpc.aio.AioRpcError | None = None
        self._ended = False
        self._cancelled = False
        self._callbacks: list[Callable[[Any], None]] = []

    def __aiter__(self) -> AsyncIterator[Any]:
        if self._reader is None:
            self._reader = self._read_all()
        return self._reader

    async def _read_all(self) -> AsyncIterator[Any]:
        try:
            while True:
                token = _CONTINUATION.set(self._continuation)
                try:
                    response = await anext(self._responses)
                except StopAsyncIteration:
                    return
                except RpcStatusError as exc:
                    self._error = _aio_error(exc)
                    raise self._error from None
                finally:
                    _CONTINUATION.reset(token)
                yield response
        finally:
            # A reader that stops early ends the chain now, and with it the RPC.
            aclose = getattr(self._responses, "aclose", None)
            if aclose is not None:
                await aclose()
            self._ended = True
            callbacks, self._callbacks = self._callbacks, []
            for callback in callbacks:
                callback(self)

    async def read(self) -> Any:
        try:
            return await anext(aiter(self))
        except StopAsyncIteration:
            return grpc.aio.EOF

    def _rpc(self) -> Any:
        return self._opts.grpc_call

    def cancel(self) -> bool:
        self._cancelled = True
        rpc = self._rpc()
        return True if rpc is None else bool(rpc.cancel())

    def cancelled(self) -> bool:
        rpc = self._rpc()
        return self._cancelled or (rpc is not None and bool(rpc.cancelled()))

    def done(self) -> bool:
        return self._ended

    def time_remaining(self) -> float | None:
        rpc = self._rpc()
        return None if rpc is None else rpc.time_remaining()

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._ended:
            callback(self)
        else:
            self._callbacks.append(callback)

    async def initial_metadata(self) -> Any:
        rpc = self._rpc()
        return None if rpc is None else await rpc.initial_metadata()

    async def trailing_metadata(self) -> Any:
        if self._error is not None:
            return self._error.trailing_metadata()
        rpc = self._rpc()
        return None if rpc is None else await rpc.trailing_metadata()

    async def code(self) -> grpc.StatusCode | None:
        if self._error is not None:
            return self._error.code()
        rpc = self._rpc()
        return None if rpc is None else await rpc.code()

    async def details(self) -> str | None:
        if self._error is not None:
            return self._error.details()
        rpc = self._rpc()
        return None if rpc is None else await rpc.details()

    async def debug_error_string(self) -> str | None:
        return None

    async def wait_for_connection(self) -> None:
        rpc = self._rpc()
        if rpc is not None:
            await rpc.wait_for_connection()

    async def write(self, request: Any) -> None:
        raise NotImplementedError("pass the requests as an iterator: stub.Method(iterator)")

    async def done_writing(self) -> None:
        raise NotImplementedError("pass the requests as an iterator: stub.Method(iterator)")


class _AioInterceptor:
    """What the four grpc.aio interceptors share: the chains and the per-call setup."""

    def __init__(self, chains: _Chains) -> None:
        self._chains = chains
        self.middleware = chains.middleware

    async def _unary(self, continuation: Any, details: Any, request: Any,
                     kind: CallKind) -> Any:
        name, chain = self._chains.get(details.method, kind, request)
        call = _make_call(name, kind, request, details)
        token = _CONTINUATION.set(continuation)
        try:
            response = await chain(call)
        except RpcStatusError as exc:
            raise _aio_error(exc) from None
        finally:
            _CONTINUATION.reset(token)
        if kind.request_streaming:  # grpc.aio wants a call here, not a response
            return _AioDone(response, call.context.grpc_call)
        return response

    def _stream(self, continuation: Any, details: Any, request: Any,
                kind: CallKind) -> _AioStream:
        name, chain = self._chains.get(details.method, kind, request)
        call = _make_call(name, kind, request, details)
        token = _CONTINUATION.set(continuation)
        try:
            responses = chain(call)
        except RpcStatusError as exc:
            raise _aio_error(exc) from None
        finally:
            _CONTINUATION.reset(token)
        return _AioStream(responses, call, continuation)


class AioUnaryUnaryInterceptor(_AioInterceptor, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                                    request: Any) -> Any:
        return await self._unary(continuation, client_call_details, request,
                                 CallKind.UNARY_UNARY)


class AioUnaryStreamInterceptor(_AioInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any,
                                     request: Any) -> Any:
        return self._stream(continuation, client_call_details, request, CallKind.UNARY_STREAM)


class AioStreamUnaryInterceptor(_AioInterceptor, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any,
                                     request_iterator: Any) -> Any:
        _refuse_write_style(request_iterator, client_call_details.method)
        return await self._unary(continuation, client_call_details, request_iterator,
                                 CallKind.STREAM_UNARY)


class AioStreamStreamInterceptor(_AioInterceptor, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any,
                                      request_iterator: Any) -> Any:
        _refuse_write_style(request_iterator, client_call_details.method)
        return self._stream(continuation, client_call_details, request_iterator,
                            CallKind.STREAM_STREAM)


def aio_client_interceptors(settings: SettingsArg = None, *, target: str = ""
                            ) -> list[_AioInterceptor]:
    """Interceptors for ``grpc.aio.insecure_channel(target, interceptors=...)``, one per
    call kind (grpc.aio files each interceptor under one kind), sharing one set of chains.
    Make one set per channel; open it with ``options=CHANNEL_OPTIONS``.
    """
    chains = _Chains(load(settings, is_async=True), True, target, _aio_terminal)
    return [
        AioUnaryUnaryInterceptor(chains),
        AioUnaryStreamInterceptor(chains),
        AioStreamUnaryInterceptor(chains),
        AioStreamStreamInterceptor(chains),
    ]
