"""What the asyncio server requires of an app's async servicer, stated once for the
server, which refuses to start without it, and for check, which reports it (E074)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from resilience.core.call import CallKind
from resilience.core.errors import ImproperlyConfigured


def _generated(behavior: Callable[..., Any]) -> bool:
    """Is ``behavior`` left to the generated servicer base class? Though sync, it only sets
    UNIMPLEMENTED and raises, so the stack calls it on the loop, and the client gets what
    grpc.aio sends for it without a stack."""
    return str(getattr(behavior, "__module__", "")).endswith("_pb2_grpc")


def require_async(method: str, behavior: Callable[..., Any], kind: CallKind) -> None:
    """The aio stack awaits unary servicer methods and iterates streaming ones."""
    if _generated(behavior):
        return
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
