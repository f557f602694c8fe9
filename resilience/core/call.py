"""The one object every middleware sees: a single RPC, on either side of the wire."""

from __future__ import annotations

import enum
import time
from typing import Any, Literal

Side = Literal["client", "server"]
_KEEP: Any = object()


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


new_call = object.__new__
"""``new_call(Call)``: a Call with no field set, for the few per-call paths that set every
field themselves to save ``__init__``'s frame (the client's multicallable, Timeout)."""
