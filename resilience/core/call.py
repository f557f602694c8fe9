"""The one object every middleware sees: a single RPC, on either side of the wire."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import Any, Literal

Side = Literal["client", "server"]
_KEEP: Any = object()

#: Metadata the client terminal adds to every attempt after the first (Retry, Hedging), so
#: that a server's RequestContext can log which attempt it is serving. The first attempt has
#: none. Here, not in the transport, because RequestContext reads it.
ATTEMPT_KEY = "x-resilience-attempt"


class CallKind(enum.Enum):
    """The four gRPC call shapes; middleware branch on the two streaming flags."""

    UNARY_UNARY = (False, False)
    UNARY_STREAM = (False, True)
    STREAM_UNARY = (True, False)
    STREAM_STREAM = (True, True)

    @property
    def request_streaming(self) -> bool:
        return self.value[0]

    @property
    def response_streaming(self) -> bool:
        return self.value[1]


class Call:
    """One RPC as it passes through a chain.

    ``deadline`` is an absolute ``time.monotonic()`` value or ``None``. Middleware never
    mutate a call they were given; they pass ``call.replace(...)`` down instead, so that a
    retry loop can hand every attempt the original.
    """

    __slots__ = ("attempt", "context", "deadline", "kind", "metadata", "method", "request", "side")

    def __init__(
        self,
        method: str,
        kind: CallKind,
        side: Side,
        request: Any,
        *,
        metadata: tuple[tuple[str, str | bytes], ...] = (),
        deadline: float | None = None,
        attempt: int = 1,
        context: Any = None,
    ) -> None:
        self.method = method
        self.kind = kind
        self.side = side
        self.request = request
        self.metadata = metadata
        self.deadline = deadline
        self.attempt = attempt
        self.context = context

    def replace(
        self,
        *,
        request: Any = _KEEP,
        metadata: Any = _KEEP,
        deadline: Any = _KEEP,
        attempt: Any = _KEEP,
        context: Any = _KEEP,
    ) -> Call:
        """Return a copy with the given fields changed; method, kind and side are fixed.

        Spelled out field by field because it is on every call's path (Timeout, Retry).
        """
        new = new_call(Call)
        new.method = self.method
        new.kind = self.kind
        new.side = self.side
        new.request = self.request if request is _KEEP else request
        new.metadata = self.metadata if metadata is _KEEP else metadata
        new.deadline = self.deadline if deadline is _KEEP else deadline
        new.attempt = self.attempt if attempt is _KEEP else attempt
        new.context = self.context if context is _KEEP else context
        return new

    def time_remaining(self, now: float | None = None) -> float | None:
        """Seconds left before the deadline (may be negative), or ``None`` without one."""
        if self.deadline is None:
            return None
        return self.deadline - (time.monotonic() if now is None else now)

    def __repr__(self) -> str:
        return f"<Call {self.side} {self.method} attempt={self.attempt}>"


class CancelScope:
    """What cancelling one logical client call reaches: every attempt it has started, and
    every attempt it would start (the terminal refuses them with CANCELLED).

    Shared by a call's ``CallOptions`` and those Hedging makes for its attempts, so that
    ``cancel()`` on the object a stub returned ends whichever attempts are in flight.
    """

    __slots__ = ("cancelled", "rpcs")

    def __init__(self) -> None:
        self.cancelled = False
        self.rpcs: list[Any] = []

    def add(self, rpc: Any) -> None:
        """Keep an attempt's grpc call; cancel it at once if the call was cancelled."""
        self.rpcs.append(rpc)
        if self.cancelled:
            rpc.cancel()

    def cancel(self) -> None:
        self.cancelled = True
        for rpc in list(self.rpcs):
            rpc.cancel()


class CallOptions:
    """A client call's grpc arguments that middleware do not touch, carried in
    ``Call.context`` to the terminal, and what the terminal reports back.

    The terminal leaves each attempt's grpc call in ``grpc_call`` (the last one started),
    so the object a stub returned can answer ``initial_metadata()``, ``code()`` and the
    rest for the attempt that decided the outcome. ``scope``, when set, is how the caller
    cancels the call (``CancelScope``). ``on_start``, when set, makes the sync terminal
    start a unary attempt as a grpc future and hand it over before waiting for it, so a
    layer above (Hedging, ``future()``) can cancel it from another thread. ``waiter`` is
    an asyncio future the asyncio terminal resolves with the first grpc call it starts,
    for ``write()`` on a call whose chain runs in a task.
    """

    # Class-level defaults, no __slots__: the asyncio call object is its own options and
    # sets only what differs (transport/aio_calls.py), on every call.
    credentials: Any = None
    wait_for_ready: Any = None
    compression: Any = None
    capture = False
    on_start: Callable[[Any], None] | None = None
    scope: CancelScope | None = None
    grpc_call: Any = None
    waiter: Any = None

    def __init__(
        self,
        credentials: Any = None,
        wait_for_ready: Any = None,
        compression: Any = None,
        capture: bool = False,
        on_start: Callable[[Any], None] | None = None,
        scope: CancelScope | None = None,
    ) -> None:
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression
        self.capture = capture
        self.on_start = on_start
        self.scope = scope

    def child(self) -> CallOptions:
        """Options for one of several concurrent attempts (Hedging): the same arguments
        and cancel scope, its own ``grpc_call``."""
        return CallOptions(self.credentials, self.wait_for_ready, self.compression,
                           self.capture, None, self.scope)

    def started(self, rpc: Any) -> None:
        """The terminal started ``rpc`` for this call: keep it, and cancel it at once if
        the caller already cancelled."""
        self.grpc_call = rpc
        if self.scope is not None:
            self.scope.add(rpc)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(rpc)


new_call = object.__new__
"""``new_call(Call)``: a Call with no field set, for the few per-call paths that set every
field themselves to save ``__init__``'s frame (the client's multicallable, Timeout)."""


def attempt_metadata(call: Call) -> tuple[tuple[str, str | bytes], ...]:
    """The metadata of a repeated attempt: the call's, plus its attempt number."""
    return (*call.metadata, (ATTEMPT_KEY, str(call.attempt)))


def normalise_method(method: str | bytes) -> str:
    """'/cache.CacheService/Get' (str or bytes) -> 'cache.CacheService/Get', as grpc names a
    method to a channel or an interceptor and as ``Call.method`` holds it."""
    if isinstance(method, bytes):
        method = method.decode("ascii")
    return method.lstrip("/")
