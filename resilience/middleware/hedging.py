"""Hedge idempotent client calls: when the first attempt has not answered after ``delay``,
send the same request again, take whichever answers first and cancel the rest (gRFC A6's
hedging policy, which grpcio itself does not implement).

A slow server instance or a lost packet then costs a call ``delay`` plus one more round
trip instead of its whole tail. The rules follow A6:

- attempt 1 goes at once; while no attempt has answered, one more goes every ``delay``
  seconds, up to ``max_attempts`` in all;
- the first OK answer, or the first error with a *fatal* status (any status not in
  ``non_fatal_codes``, or a local rejection marked ``retryable=False``), is the call's
  outcome; every other attempt still running is cancelled, so the server sees the
  cancellation and stops working on it;
- an attempt failing with a non-fatal status lets the others go on and sends the next
  hedge at once; when every attempt failed that way, the last error is raised;
- hedges draw on the channel's retry budget (``shared_budget``, shared with Retry): each
  non-fatal failure takes a token, the winning success gives some back, and a hedge is
  sent only while ``allows_retry()``;
- nothing runs past the call's deadline: no hedge starts after it, and the call ends
  with DEADLINE_EXCEEDED there even if an inner layer ignores the deadline.

Only idempotent methods are hedged (``ChainInfo.idempotent``, unless ``non_idempotent``)
and only unary-response ones: a response stream would need A6's commit-on-first-message
rule and a way to replay what the losing streams already delivered; Hedging leaves
itself out of streaming chains (``MiddlewareNotUsed``, logged once per method).

Sync path: every attempt runs in a thread of a per-channel pool of ``HEDGING_THREADS``
threads (``ChainInfo.shared``), and the caller waits for the first outcome; attempts are
started through the terminal's ``CallOptions.on_start`` hook, which runs them as grpc
futures that can be cancelled from here. Asyncio path: one task per attempt; cancelling
the task cancels the awaited grpc.aio call.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, cast

import grpc
import structlog

from resilience.core.call import Call, CallOptions
from resilience.core.errors import MiddlewareNotUsed, RpcStatusError, status_of
from resilience.core.middleware import ChainInfo, Handler, Middleware, MiddlewareOptions, option
from resilience.limits.retry_budget import RetryBudget, budget_problems, shared_budget
from resilience.middleware.context import rebind_attempt

log = structlog.get_logger(__name__)

MAX_ATTEMPTS_LIMIT = 5  # gRFC A6 caps maxAttempts at 5
HEDGING_THREADS = 32  # per sync channel: attempts of hedged calls running at once
EXECUTOR_KEY = "hedging_executor"
_told_off: set[tuple[str, str]] = set()  # (method, reason) already logged


def _executor(shared: dict[str, Any]) -> ThreadPoolExecutor:
    """The channel's pool for sync attempts, made by the first chain that needs it; its
    threads start on demand and end when the channel (and so the pool) is collected."""
    pool = shared.get(EXECUTOR_KEY)
    if pool is None:
        pool = shared.setdefault(
            EXECUTOR_KEY, ThreadPoolExecutor(HEDGING_THREADS, thread_name_prefix="hedging")
        )
    return cast(ThreadPoolExecutor, pool)


class _SyncAttempt:
    """One sync attempt: its pool future, and its grpc future once the terminal started it.

    ``cancel`` may come before, during or after the start; whichever comes second cancels
    the RPC, so a loser is always cancelled on the wire.
    """

    __slots__ = ("cancelled", "context", "future", "lock", "n", "rpc")

    def __init__(self, n: int, context: CallOptions) -> None:
        self.n = n
        self.context = context
        self.lock = threading.Lock()
        self.cancelled = False
        self.rpc: Any = None
        self.future: Future[None] | None = None

    def started(self, rpc: Any) -> None:
        """The terminal's ``on_start`` hook: keep the grpc future, or cancel it if too late."""
        with self.lock:
            self.rpc = rpc
            cancelled = self.cancelled
        if cancelled:
            rpc.cancel()

    def cancel(self) -> None:
        with self.lock:
            self.cancelled = True
            rpc = self.rpc
        if self.future is not None:
            self.future.cancel()  # not started yet: it never will be
        if rpc is not None:
            rpc.cancel()


class Hedging(Middleware):
    """Send an idempotent unary call up to ``max_attempts`` times, ``delay`` apart, and
    keep the first answer.

    ``hedges`` counts the hedges sent (attempts after the first) and ``hedge_wins`` the
    calls a hedge answered, for summaries and metrics. ``clock`` can be replaced for tests.
    """

    sides = frozenset({"client"})
    repeats_calls = True
    async_capable = True

    @dataclasses.dataclass(frozen=True)
    class Options(MiddlewareOptions):
        max_attempts: int = option(
            3, "Attempts in all, counting the first (at most 5, as in gRFC A6); 1 turns "
            "hedging off.", ge=1,
        )
        delay: float = option(
            0.05, "Seconds without an answer before the next hedge is sent; about the "
            "method's p95 latency sends few extra attempts.", ge=0,
        )
        non_fatal_codes: frozenset[grpc.StatusCode] = option(
            frozenset({grpc.StatusCode.UNAVAILABLE}),
            "Statuses after which the other attempts go on and the next hedge is sent at "
            "once; any other status ends the call.",
        )
        budget: bool = option(
            True,
            "Draw hedges from the channel's retry budget (gRFC A6 retry throttling), shared "
            "with Retry, so a failing server is not sent extra attempts.",
        )
        budget_max_tokens: int = option(
            10, "Tokens in the channel's budget, a whole number up to 1000 (gRFC A6's "
            "maxTokens); hedges stop at half or below.", gt=0,
        )
        budget_token_ratio: float = option(
            0.1, "Tokens a success gives back, read to three decimals (gRFC A6's "
            "tokenRatio); each non-fatal failure takes 1.", gt=0,
        )
        non_idempotent: bool = option(
            False,
            "Hedge methods not marked idempotent too; otherwise Hedging leaves itself out "
            "of their chains.",
        )

        def validate(self) -> list[str]:
            problems = []
            if self.max_attempts > MAX_ATTEMPTS_LIMIT:
                problems.append(
                    f"max_attempts {self.max_attempts} is above {MAX_ATTEMPTS_LIMIT} "
                    f"(gRFC A6's limit); use a value from 1 to {MAX_ATTEMPTS_LIMIT}"
                )
            problems += budget_problems(self.budget_max_tokens, self.budget_token_ratio)
            return problems

    def __init__(self, handler: Handler, options: MiddlewareOptions, info: ChainInfo) -> None:
        super().__init__(handler, options, info)
        opts = cast(Hedging.Options, options)
        if info.kind.request_streaming or info.kind.response_streaming:
            self._leave_out(info.method, "streaming", "only unary-response methods are "
                            "hedged; a stream is not replayed")
        if not (info.idempotent or opts.non_idempotent):
            self._leave_out(info.method, "not_idempotent", "not marked idempotent; mark it "
                            "with idempotency_level in its proto or IDEMPOTENT_METHODS, or "
                            "set Hedging's non_idempotent = true")
        if opts.max_attempts == 1:
            raise MiddlewareNotUsed("max_attempts = 1")
        self.clock = time.monotonic
        self.max_attempts = opts.max_attempts
        self.delay = opts.delay
        self.non_fatal_codes = opts.non_fatal_codes
        self.budget: RetryBudget | None = (
            shared_budget(info.shared, opts.budget_max_tokens, opts.budget_token_ratio)
            if opts.budget
            else None
        )
        self._count_lock = threading.Lock()
        self.hedges = 0
        self.hedge_wins = 0
        if info.is_async:
            self.acall = self._aunary
        else:
            self._pool = _executor(info.shared)

    @staticmethod
    def _leave_out(method: str, reason: str, detail: str) -> None:
        if (method, reason) not in _told_off:
            _told_off.add((method, reason))
            log.info("hedging_off", method=method, reason=detail)
        raise MiddlewareNotUsed(f"{method}: {detail}")

    # --- the decisions both paths share ---------------------------------------------------

    def _fatal(self, error: BaseException) -> bool:
        """Does this error end the call? Also charges a non-fatal one to the budget."""
        if (
            not isinstance(error, grpc.RpcError)
            or status_of(error) not in self.non_fatal_codes
            or not getattr(error, "retryable", True)
        ):
            return True
        if self.budget is not None:
            self.budget.record_failure()
        return False

    def _may_hedge(self, call: Call, sent: int, reason: str, started: float) -> bool:
        """May attempt ``sent + 1`` go now? Logs and counts it if so."""
        if sent >= self.max_attempts:
            return False
        if self.budget is not None and not self.budget.allows_retry():
            return False
        now = self.clock()
        if call.deadline is not None and now >= call.deadline:
            return False
        with self._count_lock:
            self.hedges += 1
        self.info.metrics.hedge()
        log.debug("hedge_sent", method=call.method, attempt=sent + 1, reason=reason,
                  after_ms=round((now - started) * 1000, 1))
        return True

    def _won(self, call: Call, attempt: int, sent: int) -> None:
        if self.budget is not None:
            self.budget.record_success()
        if attempt > 1:
            with self._count_lock:
                self.hedge_wins += 1
            log.info("hedge_won", method=call.method, attempt=attempt, attempts_sent=sent)

    def _wait(self, call: Call, next_at: float | None) -> float | None:
        """Seconds to wait for an outcome before the next hedge or the deadline is due."""
        due = next_at
        if call.deadline is not None and (due is None or call.deadline < due):
            due = call.deadline
        return None if due is None else max(0.0, due - self.clock())

    def _deadline_passed(self, call: Call, sent: int) -> RpcStatusError | None:
        if call.deadline is None or self.clock() < call.deadline:
            return None
        return RpcStatusError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"deadline for {call.method} passed with none of {sent} hedged attempts answered",
            retryable=False,
        )

    # --- sync --------------------------------------------------------------------------

    def __call__(self, call: Call) -> Any:
        outcomes: queue.SimpleQueue[tuple[_SyncAttempt, bool, Any]] = queue.SimpleQueue()
        attempts: list[_SyncAttempt] = []
        started = self.clock()
        self._start(call, 1, attempts, outcomes)
        running = sent = 1
        next_at: float | None = started + self.delay
        try:
            while True:
                try:
                    attempt, ok, value = outcomes.get(timeout=self._wait(call, next_at))
                except queue.Empty:
                    if (expired := self._deadline_passed(call, sent)) is not None:
                        raise expired from None
                    next_at = None
                    if self._may_hedge(call, sent, "delay", started):
                        sent += 1
                        running += 1
                        self._start(call, sent, attempts, outcomes)
                        next_at = self.clock() + self.delay
                    continue
                running -= 1
                attempts.remove(attempt)  # finished: nothing to cancel
                if ok:
                    self._won(call, attempt.n, sent)
                    original: CallOptions | None = call.context
                    if original is not None and original.capture:
                        original.grpc_call = attempt.context.grpc_call
                    return value
                if self._fatal(value):
                    raise value
                if self._may_hedge(call, sent, status_of(value).name, started):
                    sent += 1
                    running += 1
                    self._start(call, sent, attempts, outcomes)
                    next_at = self.clock() + self.delay
                elif running == 0:
                    raise value
        finally:
            for attempt in attempts:
                attempt.cancel()

    def _start(self, call: Call, n: int, attempts: list[_SyncAttempt],
               outcomes: queue.SimpleQueue[tuple[_SyncAttempt, bool, Any]]) -> None:
        """Submit attempt ``n`` to the pool with a context whose RPC can be cancelled."""
        opts: CallOptions | None = call.context
        context = CallOptions() if opts is None else opts.child()
        attempt = _SyncAttempt(n, context)
        context.on_start = attempt.started
        attempts.append(attempt)
        current = call.replace(attempt=n, context=context)
        attempt.future = self._pool.submit(
            contextvars.copy_context().run, self._run, current, attempt, outcomes
        )

    def _run(self, call: Call, attempt: _SyncAttempt,
             outcomes: queue.SimpleQueue[tuple[_SyncAttempt, bool, Any]]) -> None:
        rebind_attempt(call.attempt)  # in this attempt's own copy of the context
        try:
            response = self.handler(call)
        except Exception as exc:  # handed to the caller's thread, which decides
            outcomes.put((attempt, False, exc))
        else:
            outcomes.put((attempt, True, response))

    # --- asyncio -----------------------------------------------------------------------

    async def _aunary(self, call: Call) -> Any:
        """``__call__`` for asyncio: one task per attempt, cancelled when it loses."""
        loop = asyncio.get_running_loop()
        started = self.clock()
        tasks: dict[asyncio.Task[Any], int] = {}
        self._astart(loop, call, 1, tasks)
        sent = 1
        next_at: float | None = started + self.delay
        pending = set(tasks)
        try:
            while True:
                done, pending = await asyncio.wait(
                    pending, timeout=self._wait(call, next_at),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:
                    if (expired := self._deadline_passed(call, sent)) is not None:
                        raise expired
                    next_at = None
                    if self._may_hedge(call, sent, "delay", started):
                        sent += 1
                        pending.add(self._astart(loop, call, sent, tasks))
                        next_at = self.clock() + self.delay
                    continue
                for task in sorted(done, key=tasks.__getitem__):
                    error = task.exception()
                    if error is None:
                        self._won(call, tasks[task], sent)
                        response, opts = task.result()
                        if call.context is not None and opts is not None:
                            call.context.grpc_call = opts.grpc_call
                        return response
                    if self._fatal(error):
                        raise error
                    last = error
                if self._may_hedge(call, sent, status_of(last).name, started):
                    sent += 1
                    pending.add(self._astart(loop, call, sent, tasks))
                    next_at = self.clock() + self.delay
                elif not pending:
                    raise last
        finally:
            for task in pending:
                task.cancel()

    def _astart(self, loop: asyncio.AbstractEventLoop, call: Call, n: int,
                tasks: dict[asyncio.Task[Any], int]) -> asyncio.Task[Any]:
        opts: CallOptions | None = call.context
        task = loop.create_task(self._aattempt(
            call.replace(attempt=n, context=None if opts is None else opts.child())
        ))
        task.add_done_callback(_retrieve)
        tasks[task] = n
        return task

    async def _aattempt(self, call: Call) -> Any:
        rebind_attempt(call.attempt)  # the task runs in its own copy of the context
        response = await self.handler(call)
        return response, call.context


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a finished attempt's error as seen: a loser's is dropped on purpose."""
    if not task.cancelled():
        task.exception()
