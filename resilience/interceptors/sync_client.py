"""The sync client interceptor, and the terminal through which its chains reach grpc."""

from __future__ import annotations

import collections
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from resilience.conf.settings import Settings
from resilience.core.call import Call, CallKind, CallOptions, CancelScope
from resilience.core.errors import RpcStatusError
from resilience.core.middleware import Handler
from resilience.interceptors.chains import CONTINUATION, Chains, captured, make_call
from resilience.interceptors.outcomes import Stream, failed
from resilience.interceptors.settings import SettingsArg, load
from resilience.transport.calls import Answered, ChainFuture
from resilience.transport.client import FUTURE_THREADS, cancelled_before, remaining_timeout

#: In the name of the continuation grpc passes from a multicallable's ``future()``.
_FUTURE = ".future.<locals>."


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

        def stream(call: Call) -> Any:
            """Started now, as grpc starts a stream; grpc's call is the stream itself."""
            rpc = CONTINUATION.get()(_details(method, call), call.request)
            captured(call, rpc)
            return rpc

        return stream

    def unary(call: Call) -> Any:
        opts: CallOptions = call.context
        if opts.scope is not None and opts.scope.cancelled:
            raise cancelled_before(call)
        outcome = CONTINUATION.get()(_details(method, call), call.request)
        captured(call, outcome)  # before waiting: a future() caller may cancel it
        try:
            return outcome.result()  # raises the attempt's RpcError
        except grpc.FutureCancelledError:
            raise RpcStatusError(grpc.StatusCode.CANCELLED,
                                 f"{call.method} attempt {call.attempt} was cancelled by the "
                                 "client", retryable=False) from None

    return unary


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
        self._chains = Chains(settings, False, target, _sync_terminal)
        self.middleware = self._chains.middleware
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _futures(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(FUTURE_THREADS, thread_name_prefix="future")
            return self._pool

    def _intercept(self, continuation: Any, details: Any, request: Any, kind: CallKind
                   ) -> Any:
        """One call through its method's chain: a unary outcome, a stream, or a failed call
        (grpcio's intercepted calls return their errors rather than raise them).

        grpc hands ``future()`` calls the same interceptor as blocking ones; only its
        continuation's name tells them apart. A future runs the chain in a thread, as the
        channel's own ``future()`` does, so the caller gets it before the call ends."""
        name, chain = self._chains.get(details.method, kind, request)
        call = make_call(name, kind, request, details)
        token = CONTINUATION.set(continuation)
        try:
            if not kind.response_streaming and _FUTURE in continuation.__qualname__:
                call.context.scope = CancelScope()
                return ChainFuture(chain, call, call.context, self._futures())
            outcome = chain(call)
        except grpc.RpcError as exc:
            return failed(exc)
        finally:
            CONTINUATION.reset(token)
        if kind.response_streaming:
            return Stream(outcome, call, continuation)
        return Answered(outcome, call.context.grpc_call)

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                              request: Any) -> Any:
        return self._intercept(continuation, client_call_details, request, CallKind.UNARY_UNARY)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any,
                               request: Any) -> Any:
        return self._intercept(continuation, client_call_details, request, CallKind.UNARY_STREAM)

    def intercept_stream_unary(self, continuation: Any, client_call_details: Any,
                               request_iterator: Any) -> Any:
        return self._intercept(
            continuation, client_call_details, request_iterator, CallKind.STREAM_UNARY
        )

    def intercept_stream_stream(self, continuation: Any, client_call_details: Any,
                                request_iterator: Any) -> Any:
        return self._intercept(
            continuation, client_call_details, request_iterator, CallKind.STREAM_STREAM
        )


def client_interceptors(settings: SettingsArg = None, *, target: str = ""
                        ) -> list[ClientInterceptor]:
    """Interceptors for ``grpc.intercept_channel(channel, *client_interceptors(...))`` that
    run each method's client chain. Make one set per channel: it holds the channel's
    breakers and retry budget. ``target`` only names the channel in messages and logs.

    Open the channel with ``options=CHANNEL_OPTIONS`` and keep ``retryPolicy`` out of any
    ``grpc.service_config`` of your own, so that grpcio's configured retries do not
    multiply the chain's (its transparent retries stay on).
    """
    return [ClientInterceptor(load(settings, is_async=False), target)]
