"""Response streams that give back what a call holds (a slot, a permit) exactly once,
however the stream ends: finished, failed, closed early, cancelled or dropped unread."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any


async def end_early(rpc: Any, responses: Any) -> None:
    """The caller closed a stream before its end: end the RPC now rather than when it is
    garbage-collected. A grpc.aio call is cancelled; a layer's async generator is closed,
    which ends the layers below it in turn."""
    cancel = getattr(rpc, "cancel", None)
    if cancel is not None:
        cancel()
    elif (aclose := getattr(responses, "aclose", None)) is not None:
        await aclose()


def release_once(release: Callable[[], None]) -> Callable[[], None]:
    """``release`` that runs on its first call only, from whichever path ends the call first
    (end of stream, close, error, or the server's end-of-RPC callback), from any thread."""
    token = [release]

    def once() -> None:
        try:
            fn = token.pop()  # atomic: exactly one caller gets it
        except IndexError:
            return
        fn()

    return once


class ReleasingIterator:
    """Pass a response stream through and free the slot when it ends, fails, is closed, or
    is dropped without ever being iterated (``__del__``)."""

    __slots__ = ("_release", "_responses")

    def __init__(self, responses: Any, release: Callable[[], None]) -> None:
        self._release = release  # first, so __del__ still frees the slot if iter() fails
        self._responses = iter(responses)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._responses)
        except BaseException:  # StopIteration included: the stream is over either way
            self._release()
            raise

    def close(self) -> None:
        self._release()
        close = getattr(self._responses, "close", None)
        if close is not None:
            close()

    def __del__(self) -> None:
        self._release()


class AsyncReleasingIterator:
    """``ReleasingIterator`` for asyncio: also frees the slot when the reader is cancelled
    while it waits for the next response."""

    __slots__ = ("_release", "_responses")

    def __init__(self, responses: Any, release: Callable[[], None]) -> None:
        self._release = release
        self._responses = aiter(responses)  # a grpc.aio stream call is iterable, not an iterator

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        try:
            return await anext(self._responses)
        except BaseException:  # StopAsyncIteration and CancelledError included
            self._release()
            raise

    async def aclose(self) -> None:
        self._release()
        aclose = getattr(self._responses, "aclose", None)
        if aclose is not None:
            await aclose()

    def __del__(self) -> None:
        self._release()
