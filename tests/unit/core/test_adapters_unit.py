"""A user's sync-only middleware inside an asyncio chain, and the mode checks of build_chain.

The sync middleware runs in a worker thread (``resilience.core.adapters``) between async
layers; the event loop keeps serving other tasks meanwhile.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from resilience.core.call import Call, CallKind
from resilience.core.chain import MiddlewareSpec, build_chain
from resilience.core.errors import ImproperlyConfigured
from resilience.core.middleware import Handler, Middleware
from resilience.middleware import RequestLogging, Retry, Timeout

METHOD = "cache.CacheService/Get"


class SyncOnly(Middleware):
    """A user's middleware written before the asyncio mode: ``__call__`` only."""

    threads: list[int] = []
    pause = 0.0

    def __call__(self, call: Call) -> Any:
        SyncOnly.threads.append(threading.get_ident())
        time.sleep(SyncOnly.pause)  # blocking, as sync code may be
        responses = self.handler(call.replace(metadata=(("x-sync", "yes"),)))
        if self.info.kind.response_streaming:
            return self._tag(responses)
        return f"sync({responses})"

    def _tag(self, responses: Iterator[Any]) -> Iterator[Any]:
        for response in responses:
            yield f"sync({response})"


class AsyncOnly(Middleware):
    sync_capable = False
    async_capable = True


@pytest.fixture(autouse=True)
def _reset_sync_only():
    SyncOnly.threads = []
    SyncOnly.pause = 0.0


def spec(cls: type[Middleware]) -> MiddlewareSpec:
    return MiddlewareSpec(f"{__name__}.{cls.__name__}", cls, cls.__name__, cls.Options())


def chain(terminal: Handler, kind: CallKind, *classes: type[Middleware],
          is_async: bool = True) -> tuple[Handler, list[Middleware]]:
    return build_chain([spec(cls) for cls in classes], terminal, method=METHOD, kind=kind,
                       side="client", shared={}, is_async=is_async,
                       idempotent=True)


async def unary_terminal(call: Call) -> str:
    await asyncio.sleep(0)
    return dict(call.metadata).get("x-sync", "no")


async def stream_terminal(call: Call) -> AsyncIterator[str]:
    for item in ("a", "b"):
        await asyncio.sleep(0)
        yield item


LAYERS = (RequestLogging, SyncOnly, Retry, Timeout)


def test_sync_middleware_between_async_ones_on_a_unary_call():
    handler, used = chain(unary_terminal, CallKind.UNARY_UNARY, *LAYERS)
    assert [type(mw) for mw in used] == list(LAYERS)

    async def main() -> tuple[str, int]:
        response = await handler(Call(METHOD, CallKind.UNARY_UNARY, "client", "req"))
        return response, threading.get_ident()

    response, loop_thread = asyncio.run(main())
    assert response == "sync(yes)"
    assert len(SyncOnly.threads) == 1
    assert SyncOnly.threads[0] != loop_thread


def test_sync_middleware_between_async_ones_on_a_stream():
    handler, _ = chain(stream_terminal, CallKind.UNARY_STREAM, *LAYERS)

    async def main() -> tuple[list[str], int]:
        responses = handler(Call(METHOD, CallKind.UNARY_STREAM, "client", "req"))
        return [item async for item in responses], threading.get_ident()

    items, loop_thread = asyncio.run(main())
    assert items == ["sync(a)", "sync(b)"]
    assert SyncOnly.threads and SyncOnly.threads[0] != loop_thread


def test_sync_middleware_does_not_block_the_loop():
    SyncOnly.pause = 0.2
    handler, _ = chain(unary_terminal, CallKind.UNARY_UNARY, *LAYERS)

    async def main() -> int:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        assert await handler(Call(METHOD, CallKind.UNARY_UNARY, "client", "req")) == "sync(yes)"
        stop.set()
        await task
        return ticks

    assert asyncio.run(main()) >= 5  # about 20 while the worker thread sleeps


def test_async_only_middleware_in_a_sync_chain_is_refused():
    with pytest.raises(ImproperlyConfigured) as info:
        chain(lambda call: "ok", CallKind.UNARY_UNARY, Timeout, AsyncOnly, is_async=False)
    assert f"{__name__}.AsyncOnly" in str(info.value)
    assert "sync mode" in str(info.value)


def test_async_only_middleware_in_an_asyncio_chain_uses_acall():
    handler, used = chain(unary_terminal, CallKind.UNARY_UNARY, AsyncOnly, Timeout)
    assert [type(mw) for mw in used] == [AsyncOnly, Timeout]
    assert asyncio.run(handler(Call(METHOD, CallKind.UNARY_UNARY, "client", "req"))) == "no"
