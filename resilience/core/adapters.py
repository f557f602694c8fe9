"""Run a sync-only middleware inside an asyncio chain, as Django adapts sync middleware.

The middleware runs in a worker thread (``asyncio.to_thread``); the async handler below
it runs back on the event loop. The loop is never blocked, but every call pays two thread
hops, which is why ``check`` warns about it, and a cancelled caller cannot interrupt the
middleware's own code while it runs in its thread.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Iterator
from typing import Any

from resilience.core.call import Call
from resilience.core.middleware import ChainInfo, Handler, Middleware, MiddlewareOptions

_LOOP: contextvars.ContextVar[asyncio.AbstractEventLoop] = contextvars.ContextVar("loop")
_END = object()


async def _next(responses: AsyncIterator[Any]) -> Any:
    try:
        return await anext(responses)
    except StopAsyncIteration:
        return _END


def _blocking_stream(responses: AsyncIterator[Any], loop: asyncio.AbstractEventLoop
                     ) -> Iterator[Any]:
    """An async response stream, read from a worker thread one item at a time."""
    while (item := asyncio.run_coroutine_threadsafe(_next(responses), loop).result()) is not _END:
        yield item


def adapt_sync(
    factory: type[Middleware], handler: Handler, options: MiddlewareOptions, info: ChainInfo
) -> tuple[Handler, Middleware]:
    """Build ``factory`` over a blocking bridge to ``handler``; return an async handler."""
    streaming = info.kind.response_streaming

    def bridge(call: Call) -> Any:
        loop = _LOOP.get()
        if streaming:
            return _blocking_stream(handler(call), loop)
        return asyncio.run_coroutine_threadsafe(handler(call), loop).result()

    instance = factory(bridge, options, info)

    async def unary(call: Call) -> Any:
        _LOOP.set(asyncio.get_running_loop())
        return await asyncio.to_thread(instance, call)

    async def stream(call: Call) -> AsyncIterator[Any]:
        _LOOP.set(asyncio.get_running_loop())
        responses = await asyncio.to_thread(lambda: iter(instance(call)))
        while (item := await asyncio.to_thread(next, responses, _END)) is not _END:
            yield item

    return (stream if streaming else unary), instance
