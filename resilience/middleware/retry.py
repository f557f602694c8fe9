"""Retry client calls that failed with a status worth another try.

Only statuses in ``retryable_codes`` are retried (UNAVAILABLE by default: the request never
reached a server that acted on it), and never an error marked ``retryable=False``, such as
an open circuit breaker rejecting locally. The loop never sleeps after the last attempt
and never sleeps past the call's deadline; when the next wait would not fit, the last error
is raised at once.

Response-streaming calls follow gRPC's commit rule (proposal A6): they are retried only
until the first response arrives, since replaying later would repeat messages the caller
has already seen. Request-streaming calls cannot be replayed and pass straight through.

Three things keep retries from making an outage worse (gRFC A6):
- a retry budget shared by the whole channel (``shared_budget``, also drawn on by
  Hedging): failed attempts with a retryable status drain it, successes refill it, and
  below half of it no retry is made, so a client of a dead server sends about one attempt
  per call instead of ``max_attempts``;
- server pushback: a ``grpc-retry-pushback-ms`` trailer replaces the backoff for the next
  wait and restarts the backoff sequence (the wait after it is ``initial_backoff``
  again), and a negative or unreadable one means "do not retry";
- idempotency: only methods marked idempotent (their proto's ``idempotency_level``, or
  IDEMPOTENT_METHODS) are retried unless ``non_idempotent`` is set; for the others Retry
  leaves itself out of the chain when it is built.

The asyncio path follows the same rules through the same decision (``_backoff_or_raise``);
only the waiting differs: it awaits ``asleep`` so other calls run meanwhile.

Channels built by the framework keep grpcio's transparent retries (a replay, once, of a
call whose stream the server never saw, which happens inside one attempt here) but no
configured ones: resolvers may not supply a service config
(``grpc.service_config_disable_resolution``) and ``connect()`` refuses a
``grpc.service_config`` with a ``retryPolicy``. With one, every attempt here would hide up
to several attempts inside grpcio, multiplying load on a struggling server and escaping
the backoff, deadline and logging this layer is configured with.
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
from resilience.core.errors import PUSHBACK_KEY, MiddlewareNotUsed, status_of
from resilience.core.middleware import ChainInfo, Handler, Middleware, MiddlewareOptions, option
from resilience.core.streams import end_early
from resilience.limits.retry_budget import RetryBudget, budget_problems, shared_budget
from resilience.middleware.context import rebind_attempt

log = structlog.get_logger(__name__)

# At most one "retry_throttled" line per chain per this many seconds.
THROTTLE_LOG_INTERVAL_S = 1.0

_told_off: set[str] = set()  # methods whose "retry_off" line has been logged


def pushback_of(error: grpc.RpcError) -> float | None:
    """What the server's ``grpc-retry-pushback-ms`` trailer asks: seconds to wait, -1.0
    for "do not retry" (a negative or unparsable value, as A6 reads it), or ``None`` if
    the error carries no such trailer."""
    trailing = getattr(error, "trailing_metadata", None)
    if trailing is None:
        return None
    for key, value in trailing() or ():
        if key == PUSHBACK_KEY:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
            return int(text) / 1000 if text.isascii() and text.isdigit() else -1.0
    return None


class Retry(Middleware):
    """Try a call up to ``max_attempts`` times, backing off between attempts.

    ``retries`` counts the retries made so far and ``throttled`` those the budget refused,
    for summaries and metrics; ``budget`` is the channel's ``RetryBudget`` (``None`` when
    off). ``clock``, ``sleep`` (sync) and ``asleep`` (asyncio) can be replaced, for tests.
    """

    sides = frozenset({"client"})
    repeats_calls = True
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
        non_idempotent: bool = option(
            False,
            "Retry methods not marked idempotent too; otherwise Retry leaves itself out of "
            "their chains.",
        )
        budget: bool = option(
            True,
            "Draw retries from the channel's retry budget (gRFC A6 retry throttling), so a "
            "failing server gets about one attempt per call instead of max_attempts.",
        )
        budget_max_tokens: int = option(
            10, "Tokens in the channel's budget, a whole number up to 1000 (gRFC A6's "
            "maxTokens); retries stop at half or below.", gt=0,
        )
        budget_token_ratio: float = option(
            0.1, "Tokens a success gives back, read to three decimals (gRFC A6's "
            "tokenRatio); each failed attempt takes 1.", gt=0,
        )

        def validate(self) -> list[str]:
            problems = []
            if self.max_backoff < self.initial_backoff:
                problems.append(
                    f"max_backoff {self.max_backoff} is below initial_backoff "
                    f"{self.initial_backoff}; raise max_backoff"
                )
            problems += budget_problems(self.budget_max_tokens, self.budget_token_ratio)
            return problems

    def __init__(self, handler: Handler, options: MiddlewareOptions, info: ChainInfo) -> None:
        super().__init__(handler, options, info)
        opts = cast(Retry.Options, options)
        if not (info.idempotent or opts.non_idempotent):
            if info.method not in _told_off:
                _told_off.add(info.method)
                log.info(
                    "retry_off",
                    method=info.method,
                    reason="not marked idempotent; mark it with idempotency_level in its "
                    "proto or IDEMPOTENT_METHODS, or set Retry's non_idempotent = true",
                )
            raise MiddlewareNotUsed(f"{info.method} is not marked idempotent")
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
        self.budget: RetryBudget | None = (
            shared_budget(info.shared, opts.budget_max_tokens, opts.budget_token_ratio)
            if opts.budget
            else None
        )
        self._count_lock = threading.Lock()
        self.retries = 0
        self.throttled = 0
        self._throttled_unlogged = 0
        self._next_throttle_log = float("-inf")
        if self._passthrough:
            self.acall = self.handler
        else:
            self.acall = self._astream if self._streaming else self._aunary

    def __call__(self, call: Call) -> Any:
        if self._passthrough:
            return self.handler(call)
        if self._streaming:
            return self._stream(call)
        budget = self.budget
        attempt = step = 1
        current = call if call.attempt == 1 else call.replace(attempt=1)
        while True:
            try:
                response = self.handler(current)
            except grpc.RpcError as exc:
                delay, step = self._backoff_or_raise(call, attempt, exc, step)
                self.sleep(delay)
            else:
                # record_success's own first check, inlined: a full budget (the usual case)
                # costs no call at all.
                if budget is not None and budget.milli_tokens < budget.max_milli_tokens:
                    budget.record_success()
                return response
            attempt += 1
            current = call.replace(attempt=attempt)

    def _stream(self, call: Call) -> Iterator[Any]:
        """Start the first attempt now, as grpc starts a stream when the stub is called,
        and retry in the stream until the first response arrives."""
        try:
            responses = self.handler(call if call.attempt == 1 else call.replace(attempt=1))
        except grpc.RpcError as exc:
            if not self._may_retry(exc):
                raise
            return self._retrying(call, None, exc)
        return self._retrying(call, responses, None)

    def _retrying(self, call: Call, responses: Any, error: grpc.RpcError | None
                  ) -> Iterator[Any]:
        """After the first response, errors reach the caller. The attempt counts as a
        success for the budget once it commits (or ends empty)."""
        attempt = step = 1
        while True:
            if error is None:
                try:
                    responses = iter(responses)
                    first = next(responses)
                    break
                except StopIteration:
                    self._committed()
                    return
                except grpc.RpcError as exc:
                    error = exc
            delay, step = self._backoff_or_raise(call, attempt, error, step)
            self.sleep(delay)
            attempt += 1
            error = None
            try:
                responses = self.handler(call.replace(attempt=attempt))
            except grpc.RpcError as exc:
                error = exc
        self._committed()
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
        budget = self.budget
        attempt = step = 1
        current = call if call.attempt == 1 else call.replace(attempt=1)
        while True:
            try:
                response = await self.handler(current)
            except grpc.RpcError as exc:
                delay, step = self._backoff_or_raise(call, attempt, exc, step)
                await self.asleep(delay)
            else:
                # As __call__: a full budget costs no call.
                if budget is not None and budget.milli_tokens < budget.max_milli_tokens:
                    budget.record_success()
                return response
            attempt += 1
            current = call.replace(attempt=attempt)

    def _astream(self, call: Call) -> AsyncIterator[Any]:
        """``_stream`` for asyncio: the first attempt starts now."""
        try:
            rpc = self.handler(call if call.attempt == 1 else call.replace(attempt=1))
        except grpc.RpcError as exc:
            if not self._may_retry(exc):
                raise
            return self._aretrying(call, None, exc)
        return self._aretrying(call, rpc, None)

    async def _aretrying(self, call: Call, rpc: Any, error: grpc.RpcError | None
                         ) -> AsyncIterator[Any]:
        attempt = step = 1
        while True:
            if error is None:
                try:
                    responses = aiter(rpc)  # a grpc.aio stream call is iterable, not an iterator
                    first = await anext(responses)
                    break
                except StopAsyncIteration:
                    self._committed()
                    return
                except grpc.RpcError as exc:
                    error = exc
            delay, step = self._backoff_or_raise(call, attempt, error, step)
            await self.asleep(delay)
            attempt += 1
            error = None
            try:
                rpc = self.handler(call.replace(attempt=attempt))
            except grpc.RpcError as exc:
                error = exc
        self._committed()
        try:
            yield first
            async for response in responses:
                yield response
        except GeneratorExit:
            await end_early(rpc, responses)
            raise

    def _may_retry(self, error: grpc.RpcError) -> bool:
        """Could another attempt follow this error (before budget, attempts and time)?"""
        return status_of(error) in self.retryable_codes and getattr(error, "retryable", True)

    def _committed(self) -> None:
        """A stream's attempt got its first response (or ended empty): a success."""
        if self.budget is not None:
            self.budget.record_success()

    def _backoff_or_raise(self, call: Call, attempt: int, error: grpc.RpcError, step: int
                          ) -> tuple[float, int]:
        """Seconds to wait before the attempt after ``attempt``, and the ``step`` to pass
        with the next failure; or raise ``error`` if there is to be no next attempt. The one
        retry decision, shared by the sync and asyncio loops.

        ``step`` is the term of the backoff sequence the next ordinary wait takes (1 is
        ``initial_backoff``). A pushback wait replaces it and restarts the sequence, so the
        wait after it is ``initial_backoff`` again (A6: "the delay period will be reset to
        the initialBackoff setting"; grpc-core resets its BackOff).

        A failure with a retryable status is charged to the budget first, whether or not
        a retry follows, and the budget's answer is the one that failure left (A6,
        grpc-core's RecordFailure); any other error counts as neither success nor failure.
        """
        if not self._may_retry(error):
            raise error
        code = status_of(error)
        budget = self.budget
        allowed = budget is None or budget.record_failure()
        if attempt >= self.max_attempts:
            raise error
        pushback = pushback_of(error)
        if pushback is None:
            delay = self.backoff.delay(step, self.rng)
            step += 1
        elif pushback < 0:
            log.info("retry_pushback_stop", method=call.method, attempt=attempt, code=code.name)
            raise error
        else:
            delay = pushback
            step = 1
        if not allowed:
            self._throttle(call, code)
            raise error
        if call.deadline is not None and delay >= call.deadline - self.clock():
            raise error
        with self._count_lock:
            self.retries += 1
        self.info.metrics.retry()
        log.warning(
            "retrying",
            method=call.method,
            attempt=attempt,
            code=code.name,
            backoff_ms=round(delay * 1000, 1),
            **({"pushback": True} if pushback is not None else {}),
        )
        rebind_attempt(attempt + 1)  # the next attempt's lines, if a RequestContext binds
        return delay, step

    def _throttle(self, call: Call, code: grpc.StatusCode) -> None:
        """Count a retry the budget refused; log it at most once a second per chain, with
        how many were refused since the last line, so an outage does not flood the log."""
        now = self.clock()
        with self._count_lock:
            self.throttled += 1
            self._throttled_unlogged += 1
            if now < self._next_throttle_log:
                return
            self._next_throttle_log = now + THROTTLE_LOG_INTERVAL_S
            refused, self._throttled_unlogged = self._throttled_unlogged, 0
        log.info("retry_throttled", method=call.method, code=code.name, refused=refused)
