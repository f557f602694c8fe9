"""Middleware that can run in one mode only, for the mode checks."""

from __future__ import annotations

from typing import Any

from resilience import Call, Middleware


class SyncOnly(Middleware):
    """A user's middleware written before asyncio mode: no ``acall``."""

    def __call__(self, call: Call) -> Any:
        return self.handler(call)


class AsyncOnly(Middleware):
    """A middleware with only an asyncio path."""

    sync_capable = False
    async_capable = True

    def acall(self, call: Call) -> Any:
        return self.handler(call)
