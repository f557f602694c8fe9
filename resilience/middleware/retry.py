"""Retry client calls that failed with a status worth another try.

Only statuses in ``retryable_codes`` are retried (UNAVAILABLE by default: the request never
reached a server that acted on it), and never an error marked ``retryable=False``, such as
an open circuit breaker rejecting locally. The loop never sleeps after the last attempt
and never sleeps past the call's deadline; when the next wait would not fit, the last error
is raised at once.

Response-streaming calls follow gRPC's commit rule (proposal A6): they are retried only
until the first response arrives, since replaying later would repeat messages the caller
has already seen. Request-streaming calls cannot be replayed and pass straight through.

The asyncio path follows the same rules through the same decision (``_backoff_or_raise``);
only the waiting differs: it awaits ``asleep`` so other calls run meanwhile.

Channels built by the framework switch grpcio's own retries off
(``grpc.enable_retries=0``): with both on, every attempt here would hide up to several
attempts inside grpcio, multiplying load on a struggling server and escaping the backoff,
deadline and logging this layer is configured with.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal, cast

import grpc
import structlog

from resilience.backoff import Backoff
from resilience.core.call import Call
from resilience.core.errors import status_of
from resilience.core.middleware import ChainInfo, Handler, Middleware, MiddlewareOptions, option

log = structlog.get_logger(__name__)


class Retry(Middleware):
    """Try a call up to ``max_attempts`` times, backing off between attempts.

    ``retries`` counts the retries made so far, for summaries and metrics. ``clock``,
    ``sleep`` (sync) and ``asleep`` (asyncio) can be replaced, for tests.
    """

    sides = frozenset({"client"})
    async_capable = True

    @dataclasses.dataclass(frozen=True)
    class Options(MiddlewareOptions):
        max_attempts: int = option(
            3, "Attempts in all, counting the first; 1 turns retrying off.", ge=1
        )
        backoff: Literal["exponential", "fibonacci", "constant"] = option(
            "exponential", "How the wait grows from one retry to the next."
        )
        initial_backoff: float = option(
            0.05, "Seconds to wait before the second attempt, before jitter.", gt=0
        )
        max_backoff: float = option(1.0, "Longest single wait in seconds, before jitter.", gt=0)
        multiplier: float = option(2.0, "Growth factor per retry for exponential backoff.", ge=1)
        jitter: Literal["full", "none"] = option(
            "full",
            "'full' waits a random time up to the backoff so clients that failed together "
            "do not retry together; 'none' waits exactly the backoff.",
        )
        retryable_codes: frozenset[grpc.StatusCode] = option(
            frozenset({grpc.StatusCode.UNAVAILABLE}),
            "Status codes worth another attempt; an empty list never retries.",
        )

        def validate(self) -> list[str]:
            if self.max_backoff < self.initial_backoff:
                return [
                    f"max_backoff {self.max_backoff} is below initial_backoff "
                    f"{self.initial_backoff}; raise max_backoff"
                ]
            return []

    def __init__(self, handler: Handler, options: MiddlewareOptions, info: ChainInfo) -> None:
        super().__init__(handler, options, info)
        opts = cast(Retry.Options, options)
        self.clock = time.monotonic
        self.sleep = time.sleep
        self.asleep = asyncio.sleep
        self.rng = random.Random()
        self.backoff = Backoff.from_options(opts)
        self.max_attempts = opts.max_attempts
        self.retryable_codes = opts.retryable_codes
        self._passthrough = (
            info.kind.request_streaming or opts.max_attempts == 1 or not opts.retryable_codes
        )
        self._streaming = info.kind.response_streaming
        self._count_lock = threading.Lock()
        self.retries = 0
        if self._passthrough:
            self.acall = self.handler
        else:
            self.acall = self._astream if self._streaming else self._aunary

    def __call__(self, call: Call) -> Any:
        if self._passthrough:
            return self.handler(call)
        if self._streaming:
            return self._stream(call)
        try:
            return self.handler(call if call.attempt == 1 else call.replace(attempt=1))
        except grpc.RpcError as exc:
            error = exc
        attempt = 1
        while True:
            self.sleep(self._backoff_or_raise(call, attempt, error))
            attempt += 1
            try:
                return self.handler(call.replace(attempt=attempt))
            except grpc.RpcError as exc:
                error = exc

    def _stream(self, call: Call) -> Iterator[Any]:
        """Retry until the first response arrives; after that, errors reach the caller."""
        attempt = 1
        current = call if call.attempt == 1 else call.replace(attempt=1)
        while True:
            try:
                responses = iter(self.handler(current))
                first = next(responses)
                break
            except StopIteration:
                return
            except grpc.RpcError as exc:
                self.sleep(self._backoff_or_raise(call, attempt, exc))
            attempt += 1
            current = call.replace(attempt=attempt)
        try:
            yield first
            yield from responses
        except GeneratorExit:
            # The caller stopped reading: end the RPC now rather than when it is collected.
            cancel = getattr(responses, "cancel", None)
            if cancel is not None:
                cancel()
            raise

    async def _aunary(self, call: Call) -> Any:
        """``__call__`` for asyncio: the backoff is awaited, so the loop serves other calls."""
        attempt = 1
        current = call if call.attempt == 1 else call.replace(attempt=1)
        while True:
            try:
                return await self.handler(current)
            except grpc.RpcError as exc:
                await self.asleep(self._backoff_or_raise(call, attempt, exc))
            attempt += 1
            current = call.replace(attempt=attempt)

    async def _astream(self, call: Call) -> AsyncIterator[Any]:
        """``_stream`` for asyncio: retry until the first response, then pass the rest on."""
        attempt = 1
        current = call if call.attempt == 1 else call.replace(attempt=1)
        while True:
            try:
                rpc = self.handler(current)
                responses = aiter(rpc)  # a grpc.aio stream call is iterable, not an iterator
                first = await anext(responses)
                break
            except StopAsyncIteration:
                return
            except grpc.RpcError as exc:
                await self.asleep(self._backoff_or_raise(call, attempt, exc))
            attempt += 1
            current = call.replace(attempt=attempt)
        try:
            yield first
            async for response in responses:
                yield response
        except GeneratorExit:
            # The caller closed the stream: end the RPC now rather than when it is collected.
            # A grpc.aio call is cancelled; a layer's async generator is closed in turn.
            cancel = getattr(rpc, "cancel", None)
            if cancel is not None:
                cancel()
            elif (aclose := getattr(responses, "aclose", None)) is not None:
                await aclose()
            raise

    def _backoff_or_raise(self, call: Call, attempt: int, error: grpc.RpcError) -> float:
        """Seconds to wait before the attempt after ``attempt``, or raise ``error`` if there
        is to be none. The one retry decision, shared by the sync and asyncio loops."""
        code = status_of(error)
        if (
            attempt >= self.max_attempts
            or code not in self.retryable_codes
            or not getattr(error, "retryable", True)
        ):
            raise error
        delay = self.backoff.delay(attempt, self.rng)
        if call.deadline is not None and delay >= call.deadline - self.clock():
            raise error
        with self._count_lock:
            self.retries += 1
        log.warning(
            "retrying",
            method=call.method,
            attempt=attempt,
            code=code.name,
            backoff_ms=round(delay * 1000, 1),
        )
        return delay
