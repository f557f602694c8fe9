"""What the sync and asyncio client interceptors share: each method's chain, built on its
first call, and the Call of one intercepted RPC.

The interceptor's ``continuation`` is the chain's terminal. It reaches the terminal
through a context variable rather than the Call, because a chain is built once while the
continuation is new on every call, and context variables follow the call into Hedging's
threads and tasks.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor_pb2 import MethodOptions

from resilience.conf.factory import ChainFactory
from resilience.conf.settings import Settings
from resilience.core.call import Call, CallKind, CallOptions, normalise_method
from resilience.core.middleware import Handler

#: The continuation of the call in progress, for the terminal to call.
CONTINUATION: contextvars.ContextVar[Callable[..., Any]] = contextvars.ContextVar(
    "resilience_interceptor_continuation"
)


def _descriptor_idempotent(request: Any, method: str) -> bool:
    """What the request's own descriptor pool says of the method, for protos loaded into a
    pool other than protobuf's default one."""
    try:
        pool = request.DESCRIPTOR.file.pool
        descriptor = pool.FindMethodByName(method.replace("/", "."))
    except (AttributeError, KeyError):
        return False
    return descriptor.GetOptions().idempotency_level != MethodOptions.IDEMPOTENCY_UNKNOWN


class Chains:
    """Each method's client chain, built on its first call and kept, under a lock; the
    interceptors of one ``client_interceptors()`` call share it, as methods share a channel.
    """

    def __init__(self, settings: Settings, is_async: bool, target: str,
                 terminal: Callable[[str | bytes, CallKind], Handler]) -> None:
        self._factory = ChainFactory(settings, "client", is_async=is_async, target=target)
        self._terminal = terminal
        self._lock = threading.Lock()
        self._chains: dict[tuple[str | bytes, CallKind], tuple[str, Handler]] = {}
        #: The middleware each method's chain is made of, outermost first.
        self.middleware = self._factory.middleware

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
        idempotent = self._factory.resolver.is_idempotent(name) or (
            not kind.request_streaming and _descriptor_idempotent(request, name)
        )
        chain = self._factory.build(name, kind, self._terminal(method, kind),
                                    idempotent=idempotent)
        return name, chain


def make_call(name: str, kind: CallKind, request: Any, details: Any) -> Call:
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


def captured(call: Call, rpc: Any) -> None:
    """Keep the attempt's grpc call, whose metadata and status the outcome reports."""
    opts: CallOptions | None = call.context
    if opts is not None:
        opts.started(rpc)
