"""Run a sync-only middleware inside an asyncio chain, as Django adapts sync middleware.

The middleware runs in a worker thread; the async handler below it runs back on the event
loop. The loop is never blocked, but every call pays two thread hops, which is why
``check`` warns about it, and a cancelled caller cannot interrupt the middleware's own
code while it runs in its thread. The thread is held until the layers below answer, so
the pool, not the loop, bounds how many calls can be inside such a middleware at once:
``SYNC_MIDDLEWARE_THREADS`` of them, in a pool of their own so that they never starve
``asyncio.to_thread`` users of the default executor.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from resilience.core.call import Call
from resilience.core.middleware import ChainInfo, Handler, Middleware, MiddlewareOptions

SYNC_MIDDLEWARE_THREADS = 64
_LOOP: contextvars.ContextVar[asyncio.AbstractEventLoop] = contextvars.ContextVar("loop")
_END = object()
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in the adapter's pool, with the caller's context (and so its loop)."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(
                    SYNC_MIDDLEWARE_THREADS, thread_name_prefix="resilience-sync-middleware"
                )
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(_pool, context.run, fn, *args)


async def _next(responses: AsyncIterator[Any]) -> Any:
    try:
        return await anext(responses)
    except StopAsyncIteration:
        return _END


async def _awaited(handler: Handler, call: Call) -> Any:
    """Call ``handler`` on the loop: an async handler may return any awaitable (the client
    terminal returns grpc.aio's call object), which must be made on the loop's thread."""
    return await handler(call)


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
        return asyncio.run_coroutine_threadsafe(_awaited(handler, call), loop).result()

    instance = factory(bridge, options, info)

    async def unary(call: Call) -> Any:
        _LOOP.set(asyncio.get_running_loop())
        return await _in_thread(instance, call)

    async def stream(call: Call) -> AsyncIterator[Any]:
        _LOOP.set(asyncio.get_running_loop())
        responses = await _in_thread(lambda: iter(instance(call)))
        while (item := await _in_thread(next, responses, _END)) is not _END:
            yield item

    return (stream if streaming else unary), instance
