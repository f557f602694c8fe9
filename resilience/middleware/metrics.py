"""Count calls as go-grpc-prometheus does: started, handled by status code, messages, and
a latency histogram, per method and side.

Listed first in a chain, a client counts one handled call per logical call (after
retries and hedges, with a fallback's answer as OK), which is what its callers saw. With
METRICS_ENABLED = false the middleware leaves the chain when it is built, so it costs
nothing. With metrics on, a unary call adds to a few plain numbers of its thread's
``Shard`` (see ``resilience.metrics.rpc``): no lock, no label lookup, no enum hashing.
"""

from __future__ import annotations

import dataclasses
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

from resilience.core.call import Call
from resilience.core.errors import MiddlewareNotUsed, ended_status
from resilience.core.middleware import ChainInfo, Handler, Middleware, MiddlewareOptions, option
from resilience.metrics.rpc import BOUNDS, FIRST_BOUND, OK, RpcSeries, Shard

_OK = grpc.StatusCode.OK
_CANCELLED = grpc.StatusCode.CANCELLED
_clock = time.perf_counter
_bisect = bisect_left


class _Outcome:
    """Records a call's end exactly once, from whichever path ends it first. ``deadline``
    tells a server handler cancelled because its client ran out of time (see
    ``ended_status``)."""

    __slots__ = ("_deadline", "_series", "_started", "_token")

    def __init__(self, series: RpcSeries, started: float | None, deadline: float | None
                 ) -> None:
        self._series = series
        self._started = started
        self._deadline = deadline
        self._token = [True]

    def fail(self, exc: BaseException) -> None:
        self.finish(ended_status(exc, self._deadline))

    def finish(self, code: grpc.StatusCode) -> None:
        try:
            self._token.pop()  # atomic: one caller wins
        except IndexError:
            return
        self._series.handled(code, self._started)


class _CountedStream:
    """A response stream that counts each message and records the end of the call."""

    __slots__ = ("_count", "_outcome", "_responses")

    def __init__(self, responses: Any, count: Callable[[], None], outcome: _Outcome) -> None:
        self._outcome = outcome
        self._count = count
        self._responses = iter(responses)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            item = next(self._responses)
        except StopIteration:
            self._outcome.finish(_OK)
            raise
        except BaseException as exc:
            self._outcome.fail(exc)
            raise
        self._count()
        return item

    def close(self) -> None:
        self._outcome.finish(_CANCELLED)
        close = getattr(self._responses, "close", None)
        if close is not None:
            close()

    def __del__(self) -> None:
        self._outcome.finish(_CANCELLED)


class _AsyncCountedStream:
    """``_CountedStream`` for asyncio: a cancelled reader ends the call as CANCELLED."""

    __slots__ = ("_count", "_outcome", "_responses")

    def __init__(self, responses: Any, count: Callable[[], None], outcome: _Outcome) -> None:
        self._outcome = outcome
        self._count = count
        self._responses = aiter(responses)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        try:
            item = await anext(self._responses)
        except StopAsyncIteration:
            self._outcome.finish(_OK)
            raise
        except BaseException as exc:
            self._outcome.fail(exc)
            raise
        self._count()
        return item

    async def aclose(self) -> None:
        self._outcome.finish(_CANCELLED)
        aclose = getattr(self._responses, "aclose", None)
        if aclose is not None:
            await aclose()

    def __del__(self) -> None:
        self._outcome.finish(_CANCELLED)


def _counted(requests: Any, count: Callable[[], None]) -> Iterator[Any]:
    for item in requests:
        count()
        yield item


async def _acounted_async(requests: Any, count: Callable[[], None]) -> AsyncIterator[Any]:
    async for item in requests:
        count()
        yield item


def _acounted(requests: Any, count: Callable[[], None]) -> Any:
    """grpc.aio takes a request stream as an async or a plain iterable."""
    if hasattr(requests, "__aiter__"):
        return _acounted_async(requests, count)
    return _counted(requests, count)


class Metrics(Middleware):
    """grpc_{server,client}_started_total, _handled_total{grpc_code}, _msg_received_total,
    _msg_sent_total and _handling_seconds for every call of the chain's method.

    List it first, so that it sees what callers see: on the client, one call however many
    attempts Retry or Hedging made; on the server, the status sent, rejections included.
    """

    async_capable = True

    @dataclasses.dataclass(frozen=True)
    class Options(MiddlewareOptions):
        histogram: bool = option(
            True,
            "Observe each call's duration in grpc_*_handling_seconds; false saves that "
            "observation (two clock reads per call).",
        )

    options: Options

    def __init__(self, handler: Handler, options: MiddlewareOptions, info: ChainInfo) -> None:
        super().__init__(handler, options, info)
        if not info.metrics.enabled:
            raise MiddlewareNotUsed("METRICS_ENABLED is false")
        self.series = series = info.metrics.rpc(info.kind)
        self._local = series.local
        self._handled_created = series.handled_created
        self._histogram = self.options.histogram
        self._request_streaming = info.kind.request_streaming
        self._server = info.side == "server"
        # What a request stream and a response stream are counted with in this mode.
        self._count_requests = _acounted if info.is_async else _counted
        self._counted_stream = _AsyncCountedStream if info.is_async else _CountedStream
        streaming = info.kind.response_streaming
        # A unary call with the histogram on (the default) takes a path of its own.
        timed = self._histogram and not self._request_streaming and not streaming
        if info.is_async:
            self.acall = self._stream if streaming else self._aunary_timed if timed \
                else self._aunary
        self._sync: Handler = self._stream if streaming else self._unary_timed if timed \
            else self._unary
        # The chain calls ``instance.__call__``: the instance attribute skips a dispatch.
        self.__call__ = self._sync  # type: ignore[method-assign]

    def __call__(self, call: Call) -> Any:
        return self._sync(call)

    def _unary_timed(self, call: Call) -> Any:
        """A unary call with its duration observed: the path most calls take."""
        try:
            shard = self._local.shard
        except AttributeError:
            shard = self.series.adopt()
        shard.started += 1
        started = _clock()
        try:
            response = self.handler(call)
        except BaseException as exc:
            self._failed(call, exc, started)
            raise
        elapsed = _clock() - started
        if self._handled_created[OK] is None:
            self.series.first_use(OK)
        # One slot counts the handled call, its observation and its response message.
        shard.timed_ok[0 if elapsed <= FIRST_BOUND else _bisect(BOUNDS, elapsed)] += 1
        shard.sum += elapsed
        return response

    def _unary(self, call: Call) -> Any:
        """A unary response, with the histogram off or a request stream."""
        shard, call, started = self._start(call)
        try:
            response = self.handler(call)
        except BaseException as exc:
            self._failed(call, exc, started)
            raise
        self._ok(shard, started)
        return response

    async def _aunary_timed(self, call: Call) -> Any:
        """``_unary_timed`` for asyncio. The shard is the loop thread's, which is also the
        thread that resumes this coroutine after the await. The two keep their bookkeeping
        inline: a shared helper's call would add about a tenth to what metrics cost."""
        try:
            shard = self._local.shard
        except AttributeError:
            shard = self.series.adopt()
        shard.started += 1
        started = _clock()
        try:
            response = await self.handler(call)
        except BaseException as exc:
            self._failed(call, exc, started)
            raise
        elapsed = _clock() - started
        if self._handled_created[OK] is None:
            self.series.first_use(OK)
        shard.timed_ok[0 if elapsed <= FIRST_BOUND else _bisect(BOUNDS, elapsed)] += 1
        shard.sum += elapsed
        return response

    async def _aunary(self, call: Call) -> Any:
        shard, call, started = self._start(call)
        try:
            response = await self.handler(call)
        except BaseException as exc:
            self._failed(call, exc, started)
            raise
        self._ok(shard, started)
        return response

    def _stream(self, call: Call) -> _CountedStream | _AsyncCountedStream:
        """A response stream, counted by the mode's stream wrapper."""
        _, call, started = self._start(call)
        outcome = _Outcome(self.series, started, self._deadline(call))
        try:
            responses = self.handler(call)
        except BaseException as exc:
            outcome.fail(exc)
            raise
        return self._counted_stream(responses, self.series.count_response, outcome)

    def _deadline(self, call: Call) -> float | None:
        """The deadline a cancellation is read against: a server handler cancelled at its
        deadline answered DEADLINE_EXCEEDED; a client's caller that cancels, CANCELLED."""
        return call.deadline if self._server else None

    def _failed(self, call: Call, exc: BaseException, started: float | None) -> None:
        """Count a unary call that ended with ``exc``."""
        self.series.handled(ended_status(exc, self._deadline(call)), started)

    def _start(self, call: Call) -> tuple[Shard, Call, float | None]:
        """Count a started call, with a request stream's messages: the shard, the call to
        pass on, and its start time if the histogram is on."""
        try:
            shard = self._local.shard
        except AttributeError:
            shard = self.series.adopt()
        shard.started += 1
        if self._request_streaming and call.request is not None:  # None: grpc.aio write()
            call = call.replace(request=self._count_requests(call.request,
                                                             self.series.count_request))
        return shard, call, _clock() if self._histogram else None

    def _ok(self, shard: Shard, started: float | None) -> None:
        """Count an OK unary call outside the timed paths, observed if ``started``."""
        if started is not None:
            self.series.handled(_OK, started)
            return
        if self._handled_created[OK] is None:
            self.series.first_use(OK)
        shard.handled[OK] += 1
