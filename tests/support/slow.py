"""Middleware that are slow for requests whose key starts with "slow", for proving that a
slow middleware path does not stall other calls on the same event loop.

Each instance sets ``slow_started`` (a thread-safe event) as a slow call begins waiting, so
a test knows the slow call is in the middleware before it times the fast ones. Response
streams pass straight through.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from resilience.core.call import Call
from resilience.core.middleware import ChainInfo, Handler, Middleware, MiddlewareOptions

SLOW_SECONDS = 1.0


class _Slow(Middleware):
    def __init__(self, handler: Handler, options: MiddlewareOptions, info: ChainInfo) -> None:
        super().__init__(handler, options, info)
        self.slow_started = threading.Event()
        if info.kind.response_streaming:
            self.acall = handler  # type: ignore[method-assign]

    def is_slow(self, call: Call) -> bool:
        slow = str(getattr(call.request, "key", "")).startswith("slow")
        if slow:
            self.slow_started.set()
        return slow

    def __call__(self, call: Call) -> Any:
        if self.is_slow(call):
            time.sleep(SLOW_SECONDS)
        return self.handler(call)


class AsyncSlow(_Slow):
    """Async-capable: in an asyncio chain it awaits ``asyncio.sleep`` for slow keys."""

    async_capable = True

    async def acall(self, call: Call) -> Any:
        if self.is_slow(call):
            await asyncio.sleep(SLOW_SECONDS)
        return await self.handler(call)


class SyncOnlySlow(_Slow):
    """Sync-only: ``time.sleep`` for slow keys. In an asyncio chain the framework runs it in
    a worker thread, so the sleep must not hold up the loop."""

    async_capable = False


class LoopBlockingSlow(_Slow):
    """The control, a broken middleware: claims to be async-capable but calls
    ``time.sleep`` on the event loop, which stalls every call the loop serves."""

    async_capable = True

    async def acall(self, call: Call) -> Any:
        if self.is_slow(call):
            time.sleep(SLOW_SECONDS)
        return await self.handler(call)
