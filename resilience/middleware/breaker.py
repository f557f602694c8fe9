"""Client-side circuit breaker: stop calling a method that keeps failing, then probe it.

The state machine is pybreaker's (its storage, states, counters and listeners), driven by
hand instead of through ``pybreaker.CircuitBreaker.call``: that method holds the breaker's
lock for the whole RPC and so serialises every call through one method. Here the lock is
held only to admit a call while the breaker is not closed and to record an outcome.

Half-open policy: once ``reset_timeout`` has passed, the next call becomes the single
trial; calls arriving while it is in flight fail fast as if the breaker were open. A trial
that has not reported back within another ``reset_timeout`` (a stream left open, say) is
presumed lost and the next call becomes the trial. ``success_threshold`` successful trials
in a row close the breaker; a failed trial opens it again.

Outcomes: a status in ``failure_codes`` is a failure; any other status is a success, since
the server answered. CANCELLED, a stream closed early and non-``Exception`` errors such
as KeyboardInterrupt count as neither: they are the caller's doing and say nothing about the
server. Outcomes of calls admitted while closed are ignored once the breaker has left the
closed state, so only the trial moves a half-open breaker. A success while closed with
no failures counted would change nothing, so it skips the lock and pybreaker entirely;
listeners' ``success()`` therefore hears only successes that reset a count or close the
breaker.

The asyncio path is the same state machine, admission and recording, with the awaited
outcome recorded. pybreaker's own ``call_async`` needs Tornado, and ``call`` on a coroutine
function would record the creation of the coroutine rather than its outcome, so neither is
used. The lock is never held across an ``await``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Literal

import grpc
import pybreaker
import structlog

from resilience.core.call import Call, Side
from resilience.core.errors import (
    BreakerOpenError,
    ImproperlyConfigured,
    RpcStatusError,
    status_of,
)
from resilience.core.loading import import_string
from resilience.core.middleware import ChainInfo, Handler, Middleware, MiddlewareOptions, option

log = structlog.get_logger(__name__)

#: Statuses that say the caller was wrong or gave up, never that the server is unhealthy.
NEVER_FAILURES = frozenset(
    {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.CANCELLED}
)


class _StateLogger(pybreaker.CircuitBreakerListener):
    """Log every state change; they are rare and operators want each one."""

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        log.warning(
            "breaker_state",
            method=cb.name,
            old=old_state.name if old_state is not None else None,
            new=new_state.name,
        )


class CircuitBreaker(Middleware):
    """Fail fast with UNAVAILABLE while a method keeps failing, instead of piling on.

    One breaker per client method per channel, so one bad method does not cut off the
    others. ``breaker`` is the underlying ``pybreaker.CircuitBreaker``. For
    response-streaming methods the fallback returns an iterable of responses, and is used
    only before the first response: after that it would splice made-up data onto real data.
    In an asyncio chain the fallback may also be a coroutine function, and a streaming one
    may return an async iterable.
    """

    sides: ClassVar[frozenset[Side]] = frozenset({"client"})
    async_capable = True
    # Built instead by the composition root (ChainFactory) for storage = "redis": by name,
    # since the shared breaker, a layer above, subclasses this one.
    variants = {"storage": {"redis": "resilience.distributed.shared_breaker.RedisCircuitBreaker"}}

    @dataclasses.dataclass(frozen=True)
    class Options(MiddlewareOptions):
        fail_max: int = option(5, "Consecutive failures that open the breaker.", ge=1)
        reset_timeout: float = option(
            10.0, "Seconds the breaker stays open before one trial call is let through.", gt=0
        )
        success_threshold: int = option(
            1, "Successful trial calls in a row needed to close the breaker again.", ge=1
        )
        failure_codes: frozenset[grpc.StatusCode] = option(
            frozenset(
                {
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.INTERNAL,
                    grpc.StatusCode.UNKNOWN,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                }
            ),
            "Statuses that count as failures; any other status proves the server is up.",
        )
        fallback: str = option(
            "",
            "Dotted path to fn(request, error) -> response (or an async fn, under asyncio), "
            "used instead of raising when the breaker is open or a call fails with a "
            "failure code.",
        )
        storage: Literal["local", "redis"] = option(
            "local",
            "'local': one breaker per method per channel in this process; 'redis': one "
            "breaker per target (or name) and method shared by every process through "
            "REDIS_URL.",
        )
        redis_unavailable: Literal["fail_open", "fail_closed"] = option(
            "fail_open",
            "storage = 'redis' only: while Redis cannot be reached, 'fail_open' uses this "
            "process's local breaker; 'fail_closed' fails every call with UNAVAILABLE.",
        )
        state_cache_seconds: float = option(
            0.1,
            "storage = 'redis' only: how long this process trusts the shared state it last "
            "saw; a breaker opened elsewhere is seen within this (plus one round trip).",
            ge=0,
        )
        name: str = option(
            "",
            "storage = 'redis' only: shared breakers are keyed by this instead of the "
            "channel's target, for clients that reach one service by different addresses.",
        )

        def validate(self) -> list[str]:
            problems = []
            if self.storage == "local" and self.name:
                problems.append(
                    f"option 'name' is {self.name!r} but storage is 'local', where it is "
                    "ignored; set storage = 'redis' or remove name"
                )
            forbidden = self.failure_codes & NEVER_FAILURES
            if forbidden:
                names = ", ".join(sorted(code.name for code in forbidden))
                problems.append(
                    f"option 'failure_codes' includes {names}; NOT_FOUND, INVALID_ARGUMENT "
                    "and CANCELLED are caller errors or cancellations and never trip a "
                    "breaker; remove them"
                )
            if self.fallback:
                try:
                    fallback = import_string(self.fallback)
                except ImproperlyConfigured as exc:
                    problems.append(
                        f"option 'fallback' is {self.fallback!r}: {exc}; expected the dotted "
                        "path of a function fn(request, error) -> response"
                    )
                else:
                    if not callable(fallback):
                        problems.append(
                            f"option 'fallback' is {self.fallback!r}, which is a "
                            f"{type(fallback).__name__}, not a function; expected the dotted "
                            "path of a function fn(request, error) -> response"
                        )
            return problems

    options: Options

    def __init__(self, handler: Handler, options: MiddlewareOptions, info: ChainInfo) -> None:
        super().__init__(handler, options, info)
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=self.options.fail_max,
            reset_timeout=self.options.reset_timeout,
            success_threshold=self.options.success_threshold,
            exclude=[self._is_not_failure],
            listeners=[_StateLogger()],
            name=info.method,
        )
        # Shared with pybreaker so that breaker.open()/close() from outside stay atomic
        # with admission and recording.
        self._lock = self.breaker._lock
        info.metrics.watch_breaker(self.breaker)
        self._storage = self.breaker._state_storage
        self._failure_codes = self.options.failure_codes
        self._fallback: Callable[[Any, BaseException], Any] | None = (
            import_string(self.options.fallback) if self.options.fallback else None
        )
        self._reset_delta = timedelta(seconds=self.options.reset_timeout)
        self._open_message = (
            f"circuit breaker for {info.method} is open; "
            f"calls resume after {self.options.reset_timeout:g}s"
        )
        self._probe: object | None = None
        self._probe_expires = 0.0
        self._streaming = info.kind.response_streaming
        self.acall = self._astream if self._streaming else self._aunary

    @property
    def state(self) -> str:
        """'closed', 'open' or 'half-open'."""
        return self.breaker.current_state

    def __call__(self, call: Call) -> Any:
        if self._streaming:
            return self._guard_stream(call)
        storage = self._storage
        probe = None
        # The storage's fields rather than its properties: two frames less per call
        # (tests/integration/test_breaker_unit.py pins that they are what the properties return).
        if storage._state != pybreaker.STATE_CLOSED:
            try:
                probe = self._admit()
            except RpcStatusError as error:
                if self._fallback is None:
                    raise
                return self._fallback(call.request, error)
        try:
            response = self.handler(call)
        except Exception as exc:
            self._settle(probe, exc)
            if self._fallback is not None and status_of(exc) in self._failure_codes:
                return self._fallback(call.request, exc)
            raise
        except BaseException as exc:
            self._settle(probe, exc)
            raise
        # A success while closed with no failures counted would change nothing: skip the lock.
        if probe is not None or storage._fail_counter:
            self._settle(probe, None)
        return response

    def _guard_stream(self, call: Call) -> Iterator[Any]:
        """Admit now, as grpc starts a stream when the stub is called, and record when the
        stream ends, since only then is the outcome known."""
        try:
            probe = None if self._storage.state == pybreaker.STATE_CLOSED else self._admit()
        except RpcStatusError as error:
            if self._fallback is None:
                raise
            return iter(self._fallback(call.request, error))
        return self._started_stream(call, probe, self._settle)

    def _started_stream(self, call: Call, probe: Any,
                        settle: Callable[[Any, BaseException | None], None]) -> Iterator[Any]:
        """Start the admitted call; a failure to start settles it at once."""
        try:
            responses = self.handler(call)
        except Exception as exc:
            settle(probe, exc)
            if self._fallback is None or status_of(exc) not in self._failure_codes:
                raise
            return iter(self._fallback(call.request, exc))
        except BaseException as exc:
            settle(probe, exc)
            raise
        return self._settled_stream(call, probe, settle, responses)

    def _settled_stream(self, call: Call, probe: Any,
                        settle: Callable[[Any, BaseException | None], None],
                        responses: Any) -> Iterator[Any]:
        """The handler's responses, settled (``settle(probe, error or None)``) when the
        stream ends, with the fallback answering a failure before the first response; the
        Redis breaker settles through Redis with the same loop."""
        sent = False
        try:
            for response in responses:
                sent = True
                yield response
        except Exception as exc:
            settle(probe, exc)
            if sent or self._fallback is None or status_of(exc) not in self._failure_codes:
                raise
            yield from self._fallback(call.request, exc)
            return
        except BaseException as exc:
            settle(probe, exc)
            raise
        settle(probe, None)

    async def _aunary(self, call: Call) -> Any:
        """``__call__`` for asyncio, recording the outcome once it has been awaited."""
        storage = self._storage
        probe = None
        if storage._state != pybreaker.STATE_CLOSED:  # the fields, as on the sync path
            try:
                probe = self._admit()
            except RpcStatusError as error:
                if self._fallback is None:
                    raise
                return await self._afallback(call.request, error)
        try:
            response = await self.handler(call)
        except Exception as exc:
            self._settle(probe, exc)
            if self._fallback is not None and status_of(exc) in self._failure_codes:
                return await self._afallback(call.request, exc)
            raise
        except BaseException as exc:  # CancelledError: neither outcome, but frees the trial
            self._settle(probe, exc)
            raise
        if probe is not None or storage._fail_counter:
            self._settle(probe, None)
        return response

    def _astream(self, call: Call) -> AsyncIterator[Any]:
        """``_guard_stream`` for asyncio: admit and start now, record at the end."""
        try:
            probe = None if self._storage.state == pybreaker.STATE_CLOSED else self._admit()
        except RpcStatusError as error:
            if self._fallback is None:
                raise
            return self._afallback_stream(call.request, error)
        try:
            rpc = self.handler(call)
        except Exception as exc:
            self._settle(probe, exc)
            if self._fallback is None or status_of(exc) not in self._failure_codes:
                raise
            return self._afallback_stream(call.request, exc)
        except BaseException as exc:
            self._settle(probe, exc)
            raise
        return self._asettled_stream(call, probe, rpc)

    async def _asettled_stream(self, call: Call, probe: Any, rpc: Any) -> AsyncIterator[Any]:
        sent = False
        try:
            async for response in rpc:
                sent = True
                yield response
        except Exception as exc:
            self._settle(probe, exc)
            if sent or self._fallback is None or status_of(exc) not in self._failure_codes:
                raise
            async for response in self._afallback_stream(call.request, exc):
                yield response
            return
        except BaseException as exc:
            self._settle(probe, exc)
            raise
        if probe is not None or self._storage.counter:
            self._settle(probe, None)

    async def _afallback(self, request: Any, error: BaseException) -> Any:
        """Run the fallback, awaiting its result if it is a coroutine function's."""
        result = self._fallback(request, error)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _afallback_stream(self, request: Any, error: BaseException) -> AsyncIterator[Any]:
        """The fallback's responses, whether it gives a sync or an async iterable."""
        responses = await self._afallback(request, error)
        if hasattr(responses, "__aiter__"):
            async for response in responses:
                yield response
        else:
            for response in responses:
                yield response

    def _admit(self) -> object | None:
        """Let the call through or raise UNAVAILABLE; return a token if it is the trial."""
        with self._lock:
            state = self.breaker.state.name
            if state == pybreaker.STATE_CLOSED:
                return None
            now = time.monotonic()
            if state == pybreaker.STATE_OPEN:
                # The same test as pybreaker's CircuitOpenState.before_call, which we cannot
                # call: it would run the trial itself, under the lock.
                opened_at = self._storage.opened_at
                if opened_at and datetime.now(UTC) < opened_at + self._reset_delta:
                    raise self._rejection()
                self.breaker.half_open()
            elif self._probe is not None and now < self._probe_expires:
                raise self._rejection()
            self._probe = probe = object()
            self._probe_expires = now + self.options.reset_timeout
            return probe

    def _settle(self, probe: object | None, exc: BaseException | None) -> None:
        """Feed one outcome (``None`` for success) to pybreaker's current state."""
        if exc is None and probe is None and not self._storage.counter:
            return  # a success while closed with no failures counted changes nothing
        with self._lock:
            if probe is not None:
                if probe is not self._probe:
                    return  # presumed lost and superseded by a newer trial
                self._probe = None
            state = self.breaker.state
            if probe is None and state.name != pybreaker.STATE_CLOSED:
                return
            if exc is None:
                state._handle_success()
            elif isinstance(exc, Exception) and status_of(exc) != grpc.StatusCode.CANCELLED:
                # Tripping raises CircuitBreakerError; the caller gets the real error instead.
                with contextlib.suppress(pybreaker.CircuitBreakerError):
                    state._handle_error(exc, reraise=False)

    def _is_not_failure(self, exc: BaseException) -> bool:
        """pybreaker ``exclude`` hook: errors outside failure_codes count as successes."""
        return status_of(exc) not in self._failure_codes

    def _rejection(self) -> BreakerOpenError:
        self.info.metrics.rejected("breaker_open")
        return BreakerOpenError(grpc.StatusCode.UNAVAILABLE, self._open_message, retryable=False)
