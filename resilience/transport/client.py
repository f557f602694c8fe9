"""The client side: a ``grpc.Channel`` wrapper that runs each method through its own chain.

Generated stubs call ``channel.unary_unary(...)`` and friends once, when the stub is made;
that is where each method's chain is built, so the per-call path is the chain and nothing
else. Code that calls a stub does not change.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from time import monotonic
from typing import Any, ClassVar

import grpc

from resilience.conf.credentials import channel_credentials, channel_options
from resilience.conf.factory import ChainFactory
from resilience.core.call import (
    Call,
    CallKind,
    CallOptions,
    CancelScope,
    attempt_metadata,
    new_call,
    normalise_method,
)
from resilience.core.errors import RpcStatusError
from resilience.core.middleware import Handler
from resilience.transport.calls import Answered, ChainFuture, StreamCall
from resilience.transport.service_config import DISABLE_RESOLUTION, check_channel_options

# grpcio's transparent retries (of RPCs the server never saw) stay on; configured retries are
# the Retry middleware's alone, so no resolver may hand the channel a service config (its
# retryPolicy would multiply Retry's attempts). connect() also refuses such a policy in a
# grpc.service_config option (transport/service_config.py).
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = ((DISABLE_RESOLUTION, 1),)

#: Threads per sync channel that run ``future()`` calls; more wait for a free one.
FUTURE_THREADS = 64

def remaining_timeout(call: Call) -> float | None:
    """The grpc ``timeout`` of one attempt: what is left of its deadline.

    Raises DEADLINE_EXCEEDED itself when nothing is left, as grpc would only after a
    round trip.
    """
    if call.deadline is None:
        return None
    remaining = call.deadline - monotonic()
    if remaining <= 0:
        raise RpcStatusError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"deadline for {call.method} passed before attempt {call.attempt} started",
        )
    return remaining


def call_kwargs(call: Call) -> dict[str, Any]:
    """The grpc keyword arguments of one attempt: its timeout, metadata and call options."""
    kwargs: dict[str, Any] = {
        "timeout": remaining_timeout(call),
        "metadata": (call.metadata or None) if call.attempt == 1 else attempt_metadata(call),
    }
    opts: CallOptions | None = call.context
    if opts is not None:
        kwargs["credentials"] = opts.credentials
        kwargs["wait_for_ready"] = opts.wait_for_ready
        kwargs["compression"] = opts.compression
    return kwargs


def cancelled_before(call: Call) -> RpcStatusError:
    """What a terminal raises instead of starting an attempt of a call already cancelled."""
    return RpcStatusError(
        grpc.StatusCode.CANCELLED,
        f"{call.method} was cancelled by the client before attempt {call.attempt}",
        retryable=False,
    )


def _terminal(inner: Any) -> Handler:
    """The innermost handler: the real grpc multicallable, with the chain's deadline.

    A call with ``CallOptions`` reports each attempt's grpc call back through them
    (``CallOptions.started``), and one whose caller has cancelled starts no attempt.
    """

    def send(call: Call) -> Any:
        opts: CallOptions | None = call.context
        if opts is None:
            # remaining_timeout inlined (a frame less per call); it raises once time is up.
            timeout = call.deadline
            if timeout is not None:
                timeout -= monotonic()
                if timeout <= 0:
                    remaining_timeout(call)
            return inner(
                call.request, timeout=timeout,
                metadata=(call.metadata or None) if call.attempt == 1 else attempt_metadata(call),
            )
        if opts.scope is not None and opts.scope.cancelled:
            raise cancelled_before(call)
        if opts.on_start is not None:
            return _cancellable(inner, call, opts)
        if opts.capture:
            response, rpc = inner.with_call(call.request, **call_kwargs(call))
            opts.started(rpc)
            return response
        return inner(call.request, **call_kwargs(call))

    return send


def _stream_terminal(inner: Any) -> Handler:
    """The innermost handler of a response stream: grpc's call object itself, which is
    the stream, kept in the call's options for the object the stub returns."""

    def send(call: Call) -> Any:
        opts: CallOptions = call.context
        if opts.scope is not None and opts.scope.cancelled:
            raise cancelled_before(call)
        rpc = inner(call.request, **call_kwargs(call))
        opts.started(rpc)
        return rpc

    return send


def _cancellable(inner: Any, call: Call, opts: CallOptions) -> Any:
    """One attempt as a grpc future that ``opts.on_start`` or the call's cancel scope may
    cancel from another thread."""
    future = inner.future(call.request, **call_kwargs(call))
    opts.started(future)
    opts.on_start(future)  # type: ignore[misc]
    try:
        return future.result()
    except grpc.FutureCancelledError:
        raise RpcStatusError(
            grpc.StatusCode.CANCELLED,
            f"{call.method} attempt {call.attempt} was cancelled by the client",
            retryable=False,
        ) from None


def _ignore(rpc: Any) -> None:
    """``on_start`` of a ``future()`` call: its cancel scope already holds the attempt."""


class ChainMultiCallable:
    """Stands in for grpc's multicallables; ``__call__`` builds a Call and runs the chain.

    Subclasses, one per channel kind and response shape, turn the chain's result into
    what grpc's own multicallable returns. This one returns it as is: the response of a
    sync unary call. grpc.aio takes the call options as keywords only; these accept them
    as grpc's sync multicallables do, a superset, so both channels share the per-call path.
    """

    __slots__ = ("_chain", "_kind", "_method", "_owner")

    def __init__(self, method: str, kind: CallKind, chain: Handler, owner: Any) -> None:
        self._method = method
        self._kind = kind
        self._chain = chain
        self._owner = owner

    def _call(
        self,
        request: Any,
        timeout: float | None,
        metadata: Sequence[tuple[str, str | bytes]] | None,
        options: CallOptions | None,
    ) -> Call:
        return Call(
            self._method, self._kind, "client", request,
            metadata=tuple(metadata) if metadata else (),
            deadline=None if timeout is None else monotonic() + timeout,
            context=options,
        )

    def __call__(
        self,
        request: Any = None,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str | bytes]] | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        options = None
        if credentials is not None or wait_for_ready is not None or compression is not None:
            options = CallOptions(credentials, wait_for_ready, compression)
        # Call(...) spelled out field by field: no __init__ frame on every call.
        call = new_call(Call)
        call.method = self._method
        call.kind = self._kind
        call.side = "client"
        call.request = request
        call.metadata = tuple(metadata) if metadata else ()
        call.deadline = None if timeout is None else monotonic() + timeout
        call.attempt = 1
        call.context = options
        return self._chain(call)


class _MultiCallable(ChainMultiCallable):
    """The sync unary-response multicallable, with grpc's ``with_call`` and ``future``."""

    __slots__ = ()

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str | bytes]] | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> tuple[Any, Any]:
        """Like grpc's: (response, call), the call being the attempt that answered."""
        options = CallOptions(credentials, wait_for_ready, compression, capture=True)
        response = self._chain(self._call(request, timeout, metadata, options))
        rpc = options.grpc_call
        return response, (Answered(response, None) if rpc is None else rpc)

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str | bytes]] | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> ChainFuture:
        """Like grpc's: a ``grpc.Future`` that is also a ``grpc.Call``, running the whole
        chain in the channel's pool; ``cancel()`` ends the attempt in flight."""
        options = CallOptions(credentials, wait_for_ready, compression, capture=True,
                              on_start=_ignore, scope=CancelScope())
        call = self._call(request, timeout, metadata, options)
        return ChainFuture(self._chain, call, options, self._owner.pool())


class _StreamMultiCallable(ChainMultiCallable):
    """The sync response-streaming multicallable: returns a ``StreamCall``, started."""

    __slots__ = ()

    def __call__(
        self,
        request: Any = None,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str | bytes]] | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> StreamCall:
        options = CallOptions(credentials, wait_for_ready, compression, capture=True,
                              scope=CancelScope())
        call = self._call(request, timeout, metadata, options)
        try:
            responses = self._chain(call)
        except grpc.RpcError as exc:  # refused before any attempt: raised on first read
            return StreamCall(None, options, call.deadline, exc)
        return StreamCall(iter(responses), options, call.deadline)


def _channel_method(kind: CallKind) -> Callable[..., Any]:
    """``unary_unary`` and its three siblings: the same lookup, for one call kind each."""
    attr = kind.name.lower()

    def method(self: ChainedChannel, method: Any, request_serializer: Any = None,
               response_deserializer: Any = None, **kwargs: Any) -> Any:
        return self._multicallable(
            getattr(self._channel, attr), method, kind,
            request_serializer=request_serializer,
            response_deserializer=response_deserializer, **kwargs,
        )

    method.__name__ = attr
    return method


class ChainedChannel:
    """What the sync and the asyncio channel share: each method's chain, built when a stub
    asks for the method and kept for the channel's life, so that every stub made on the
    channel shares one circuit breaker per method.

    Subclasses say how the innermost handler calls grpc (``_terminal``) and what stands in
    for grpc's multicallables (``multicallables``, for a unary and a streaming response).
    """

    is_async: ClassVar[bool] = False
    multicallables: ClassVar[tuple[type[ChainMultiCallable], type[ChainMultiCallable]]] = (
        ChainMultiCallable, ChainMultiCallable,
    )

    def __init__(self, channel: Any, factory: ChainFactory) -> None:
        self._channel = channel
        self._factory = factory
        self._lock = threading.Lock()
        self._built: dict[tuple[str, CallKind], ChainMultiCallable] = {}
        #: The middleware each method's chain is made of, outermost first.
        self.middleware = factory.middleware

    def _terminal(self, inner: Any, kind: CallKind) -> Handler:
        raise NotImplementedError

    def _multicallable(
        self, factory: Callable[..., Any], method: str | bytes, kind: CallKind, **kwargs: Any
    ) -> ChainMultiCallable:
        name = normalise_method(method)
        with self._lock:
            built = self._built.get((name, kind))
            if built is None:
                inner = factory(method, **kwargs)
                chain = self._factory.build(name, kind, self._terminal(inner, kind))
                built = self.multicallables[kind.response_streaming](name, kind, chain, self)
                self._built[(name, kind)] = built
        return built

    unary_unary = _channel_method(CallKind.UNARY_UNARY)
    unary_stream = _channel_method(CallKind.UNARY_STREAM)
    stream_unary = _channel_method(CallKind.STREAM_UNARY)
    stream_stream = _channel_method(CallKind.STREAM_STREAM)


class ResilientChannel(ChainedChannel, grpc.Channel):
    """Wraps a ``grpc.Channel`` so that every method runs through the chain its settings
    give it."""

    multicallables = (_MultiCallable, _StreamMultiCallable)

    def __init__(self, channel: Any, factory: ChainFactory) -> None:
        super().__init__(channel, factory)
        self._pool: ThreadPoolExecutor | None = None

    def _terminal(self, inner: Any, kind: CallKind) -> Handler:
        return _stream_terminal(inner) if kind.response_streaming else _terminal(inner)

    def pool(self) -> ThreadPoolExecutor:
        """The threads that run ``future()`` calls' chains, started on first use."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(FUTURE_THREADS, thread_name_prefix="future")
            return self._pool

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        self._channel.subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Any) -> None:
        self._channel.unsubscribe(callback)

    def close(self) -> None:
        self._channel.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> ResilientChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(
    target: str,
    settings: Any,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> ResilientChannel:
    """Open a channel to ``target`` whose methods run through the settings' client chains.

    Without ``credentials`` the channel uses TLS as the CLIENT_TLS_* settings say.
    """
    channel = open_channel(grpc, target, settings, credentials, options)
    return ResilientChannel(channel, ChainFactory(settings, "client", target=target))


def open_channel(
    module: Any,
    target: str,
    settings: Any,
    credentials: grpc.ChannelCredentials | None,
    options: Sequence[tuple[str, Any]],
) -> Any:
    """A plain channel from ``module`` (``grpc`` or ``grpc.aio``) on which grpcio retries
    only transparently (``options`` may not configure retries of its own) and, without
    explicit ``credentials``, TLS as the CLIENT_TLS_* settings say."""
    check_channel_options(options)
    if credentials is None:  # from the CLIENT_TLS_* settings; None is plaintext
        credentials = channel_credentials(settings)
        options = [*channel_options(settings), *options]
    all_options = [*CHANNEL_OPTIONS, *options]
    if credentials is None:
        return module.insecure_channel(target, options=all_options)
    return module.secure_channel(target, credentials, options=all_options)

