"""Drive grpc.aio servers and clients from plain sync test code.

Each façade owns an event loop running in a thread of its own, stopped when the façade
closes. Test bodies stay sync: threads, barriers, ``pytest.raises(grpc.RpcError)``. What
they call is submitted to the loop with ``asyncio.run_coroutine_threadsafe`` and waited
for, so the aio objects are only ever touched on their own loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

from apps.cache.protos import cache_pb2_grpc
from resilience.conf.settings import Settings
from resilience.transport.aio_client import aio_connect
from resilience.transport.aio_serving import AioServer

T = TypeVar("T")
_END = object()


class LoopThread:
    """An event loop running forever in a daemon thread, until ``close``."""

    def __init__(self, name: str = "aio-facade") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coroutine`` as a task on the loop. Cancelling the future cancels it."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop and wait for its result (or its exception)."""
        return self.submit(coroutine).result()

    def close(self) -> None:
        """Cancel what is still running, stop the loop and join its thread."""
        if self.loop.is_closed():
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()
            await self.loop.shutdown_default_executor()

        try:
            self.submit(cancel_all()).result(timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self.loop.close()


class SyncAioServer:
    """An ``AioServer`` started on a loop thread of its own; ``.address``, ``.port``,
    ``.interceptor`` and ``.server`` as on the sync ``Server``, and a blocking ``stop``."""

    def __init__(self, settings: Settings, apps: Any, address: str) -> None:
        self._loop = LoopThread("aio-server")
        try:

            async def start() -> AioServer:
                server = AioServer(settings, apps, address)  # needs the running loop
                await server.start()
                return server

            self.server = self._loop.run(start())
        except BaseException:
            self._loop.close()
            raise
        self.address = self.server.address
        self.port = self.server.port
        self.interceptor = self.server.interceptor

    def stop(self, grace: float | None = 0) -> None:
        try:
            self._loop.run(self.server.stop(grace))
        finally:
            self._loop.close()


class SyncStream:
    """A sync iterator over an aio response stream; ``close()`` (or ``cancel()``) closes
    the async iterator on its loop, which ends the RPC."""

    def __init__(self, responses: Any, loop: LoopThread) -> None:
        self._responses = responses
        self._iterator = aiter(responses)
        self._loop = loop
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._closed:
            raise StopIteration

        async def step() -> Any:
            try:
                return await anext(self._iterator)
            except StopAsyncIteration:
                return _END

        item = self._loop.run(step())
        if item is _END:
            self._closed = True
            raise StopIteration
        return item

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        async def close() -> None:
            aclose = getattr(self._iterator, "aclose", None)
            if aclose is not None:
                await aclose()
            else:
                self._responses.cancel()

        self._loop.run(close())

    cancel = close


class SyncMethod:
    """One aio stub method, called like a sync one: ``method(request, timeout=...)`` blocks
    for the response (or returns a ``SyncStream``); ``future(...)`` does not block, and
    cancelling its future cancels the call's task, hence the RPC."""

    def __init__(self, method: Callable[..., Any], loop: LoopThread) -> None:
        self._method = method
        self._loop = loop

    async def _invoke(self, request: Any, kwargs: dict[str, Any]) -> Any:
        # Called on the loop, so the chain and grpc.aio only ever run there.
        result = self._method(request, **kwargs)
        if inspect.isawaitable(result):
            return await result
        return SyncStream(result, self._loop)

    def __call__(self, request: Any, **kwargs: Any) -> Any:
        return self._loop.run(self._invoke(request, kwargs))

    def future(self, request: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        return self._loop.submit(self._invoke(request, kwargs))


class SyncAioStub:
    """A CacheService stub on an aio resilient channel, driven from sync code; the channel
    (with its ``.middleware``) is on ``.channel``."""

    def __init__(self, settings: Settings, address: str, options: Any = ()) -> None:
        self._loop = LoopThread("aio-client")

        async def open_channel() -> tuple[Any, Any]:
            channel = aio_connect(address, settings, options=options)
            return channel, cache_pb2_grpc.CacheServiceStub(channel)

        try:
            self.channel, self._stub = self._loop.run(open_channel())
        except BaseException:
            self._loop.close()
            raise

    def __getattr__(self, name: str) -> SyncMethod:
        return SyncMethod(getattr(self.__dict__["_stub"], name), self.__dict__["_loop"])

    def close(self) -> None:
        try:
            self._loop.run(self.channel.close())
        finally:
            self._loop.close()
