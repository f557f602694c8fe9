"""CircuitBreaker with ``storage = "redis"``: one breaker shared by every client process
that names the same target (or ``name``) and method.

The chain factory builds this class instead of ``CircuitBreaker`` when its options say so
(``CircuitBreaker.variants``), so the local breaker's per-call path is untouched. The
shared state lives in one Redis hash (``resilience.distributed.breaker_state``); each
process keeps a copy of the state it last saw and trusts it for ``state_cache_seconds``:

* cached closed and fresh: the call goes straight through, and a success with no
  failures counted costs no Redis round trip at all;
* cache stale, or the breaker not closed: one round trip (``admit``) before the call, which
  also refreshes the cache and, once ``reset_timeout`` has passed, hands out the single
  trial of all processes;
* cached open and fresh: fail fast with no round trip;
* a failure, a success that resets a count, or the trial's outcome: one round trip
  (``record``), whose answer refreshes the cache.

So a success costs at most one round trip and a failure at most two, and a process learns
of a breaker opened by another within ``state_cache_seconds`` (plus one round trip).

Redis unavailable (``resilience.distributed.connection.Health``): with ``redis_unavailable
= "fail_open"`` the call runs through this process's own local breaker (the one
``storage = "local"`` would use, with its own counts); with ``"fail_closed"`` it fails at
once with UNAVAILABLE, as if the breaker were open (so the fallback, if any, answers).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import structlog

from resilience.core.call import Call
from resilience.core.errors import BreakerOpenError, RpcStatusError, status_of
from resilience.core.middleware import ChainInfo, Handler, MiddlewareOptions
from resilience.distributed import breaker_state
from resilience.distributed.breaker_state import BreakerReply
from resilience.distributed.connection import (
    REDIS_ERRORS,
    aready,
    async_script,
    config_of,
    failed,
    health,
    ready,
    script,
)
from resilience.middleware.breaker import CircuitBreaker

log = structlog.get_logger(__name__)


class RedisCircuitBreaker(CircuitBreaker):
    """A ``CircuitBreaker`` whose state is shared through Redis; see the module docstring.

    ``key`` is the Redis key; ``state`` the shared state as this process last saw it.
    """

    def __init__(self, handler: Handler, options: MiddlewareOptions, info: ChainInfo) -> None:
        super().__init__(handler, options, info)
        opts = self.options
        self._config = config_of(info, f"CircuitBreaker for {info.method}")
        self._health = health(self._config)
        self.key = f"{self._config.key_prefix}:breaker:{opts.name or info.target}:{info.method}"
        reset_ms = max(1, math.ceil(opts.reset_timeout * 1000))
        # A key outlives any state worth keeping: open, then a trial, then some.
        ttl_ms = 2 * reset_ms + 60_000
        self._limits = (opts.fail_max, reset_ms, opts.success_threshold, ttl_ms)
        self._cache_s = opts.state_cache_seconds
        self._fail_open = opts.redis_unavailable == "fail_open"
        self._script: Any = None if info.is_async else script(self._config, breaker_state.LUA)
        self._shared_state = "closed"
        self._failures = 0
        self._fresh_until = 0.0
        self._open_until = 0.0
        self._down_message = (
            f"circuit breaker for {info.method} cannot reach its shared state in Redis "
            f"and redis_unavailable = 'fail_closed'"
        )
        self._local_acall = self.acall
        self.acall = self._ashared_stream if self._streaming else self._ashared_unary

    @property
    def state(self) -> str:
        """The shared state as this process last saw it: 'closed', 'open' or 'half-open'."""
        return self._shared_state

    # --- deciding, without I/O ------------------------------------------------------------

    def _cached(self, now: float) -> str | None:
        """"" to pass on the cached state, ``None`` to ask Redis; raise if cached open."""
        if now < self._fresh_until:
            state = self._shared_state
            if state == "closed":
                return ""
            if state == "open" and now < self._open_until:
                raise self._rejection()
        # Other calls use the cached state while this one asks.
        self._fresh_until = now + self._cache_s
        return None

    def _fresh_probe(self, now: float) -> str | None:
        """A new probe id when Redis must be asked; "" when the cached state admits the call,
        ``None`` when Redis is unusable and the local breaker takes it (fail_open)."""
        if not self._health.usable():
            return self._down()
        if self._cached(now) is not None:
            return ""
        return os.urandom(8).hex()

    def _lost(self, error: BaseException) -> None:
        """Redis failed: ask it again on the next call, and tell its health."""
        self._fresh_until = 0.0
        failed(self._config, error)

    def _down(self, error: BaseException | None = None) -> None:
        """Redis failed (``error``) or is resting: fall back per redis_unavailable."""
        if error is not None:
            self._lost(error)
        if not self._fail_open:
            raise BreakerOpenError(grpc.StatusCode.UNAVAILABLE, self._down_message,
                                   retryable=False)

    def _learn(self, reply: BreakerReply, now: float) -> str | None:
        """Cache the shared state from a reply; the admission it implies (see ``_admit``)."""
        self._health.succeeded()
        if reply.state != self._shared_state:
            log.warning("breaker_state", method=self.info.method, old=self._shared_state,
                        new=reply.state, shared=True, key=self.key)
        self._shared_state = reply.state
        self._failures = reply.failures
        self._open_until = now + reply.open_ms / 1000
        self._fresh_until = now + self._cache_s
        if reply.verdict == "reject":
            raise self._rejection()
        return reply.verdict

    def _outcome(self, probe: str, exc: BaseException | None) -> str | None:
        """What to record: "success", "failure", or ``None`` when nothing can change."""
        if exc is None:
            return "success" if probe or self._failures else None
        if not isinstance(exc, Exception):
            return None  # KeyboardInterrupt, cancellation: neither outcome
        code = status_of(exc)
        if code in self._failure_codes:
            return "failure"
        if code == grpc.StatusCode.CANCELLED:
            return None
        return "success" if probe or self._failures else None

    def _args(self, operation: str, probe: str) -> list[Any]:
        return breaker_state.arguments(operation, probe, *self._limits)

    # --- the sync path --------------------------------------------------------------------

    def _admit_shared(self) -> str | None:
        """"" for a normal call, a probe id for the trial, ``None`` to use the local breaker
        (Redis unavailable, fail_open); raise UNAVAILABLE to fail fast."""
        now = time.monotonic()
        probe = self._fresh_probe(now)
        if not probe:  # decided without a round trip
            return probe
        try:
            ready(self._config)
            reply = self._script(keys=[self.key], args=self._args("admit", probe))
        except REDIS_ERRORS as error:
            return self._down(error)
        verdict = self._learn(BreakerReply.parse(reply), now)
        return probe if verdict == "trial" else ""

    def _record(self, probe: str, exc: BaseException | None) -> None:
        operation = self._outcome(probe, exc)
        if operation is None or not self._health.usable():
            return
        try:
            ready(self._config)
            reply = self._script(keys=[self.key], args=self._args(operation, probe))
        except REDIS_ERRORS as error:
            self._lost(error)
            return
        self._learn(BreakerReply.parse(reply), time.monotonic())

    def __call__(self, call: Call) -> Any:
        if self._streaming:
            return self._shared_stream(call)
        try:
            probe = self._admit_shared()
        except RpcStatusError as error:
            if self._fallback is None:
                raise
            return self._fallback(call.request, error)
        if probe is None:
            return CircuitBreaker.__call__(self, call)
        try:
            response = self.handler(call)
        except Exception as exc:
            self._record(probe, exc)
            if self._fallback is not None and status_of(exc) in self._failure_codes:
                return self._fallback(call.request, exc)
            raise
        if probe or self._failures:
            self._record(probe, None)
        return response

    def _shared_stream(self, call: Call) -> Iterator[Any]:
        """Admit and start now, as grpc starts a stream; record when the stream ends."""
        try:
            probe = self._admit_shared()
        except RpcStatusError as error:
            if self._fallback is None:
                raise
            return iter(self._fallback(call.request, error))
        if probe is None:
            return self._guard_stream(call)
        # ``_record`` ignores what cannot change the shared state: an interruption, or a
        # success with nothing to reset.
        return self._started_stream(call, probe, self._record)

    # --- the asyncio path -----------------------------------------------------------------

    async def _aadmit_shared(self) -> str | None:
        now = time.monotonic()
        probe = self._fresh_probe(now)
        if not probe:
            return probe
        try:
            await aready(self._config)
            run = async_script(self._config, breaker_state.LUA)
            reply = await run(keys=[self.key], args=self._args("admit", probe))
        except REDIS_ERRORS as error:
            return self._down(error)
        verdict = self._learn(BreakerReply.parse(reply), now)
        return probe if verdict == "trial" else ""

    async def _arecord(self, probe: str, exc: BaseException | None) -> None:
        operation = self._outcome(probe, exc)
        if operation is None or not self._health.usable():
            return
        try:
            await aready(self._config)
            run = async_script(self._config, breaker_state.LUA)
            reply = await run(keys=[self.key], args=self._args(operation, probe))
        except REDIS_ERRORS as error:
            self._lost(error)
            return
        self._learn(BreakerReply.parse(reply), time.monotonic())

    async def _ashared_unary(self, call: Call) -> Any:
        try:
            probe = await self._aadmit_shared()
        except RpcStatusError as error:
            if self._fallback is None:
                raise
            return await self._afallback(call.request, error)
        if probe is None:
            return await self._local_acall(call)
        try:
            response = await self.handler(call)
        except Exception as exc:
            await self._arecord(probe, exc)
            if self._fallback is not None and status_of(exc) in self._failure_codes:
                return await self._afallback(call.request, exc)
            raise
        if probe or self._failures:
            await self._arecord(probe, None)
        return response

    async def _ashared_stream(self, call: Call) -> AsyncIterator[Any]:
        try:
            probe = await self._aadmit_shared()
        except RpcStatusError as error:
            if self._fallback is None:
                raise
            async for response in self._afallback_stream(call.request, error):
                yield response
            return
        if probe is None:
            async for response in self._local_acall(call):
                yield response
            return
        sent = False
        try:
            async for response in self.handler(call):
                sent = True
                yield response
        except Exception as exc:
            await self._arecord(probe, exc)
            if sent or self._fallback is None or status_of(exc) not in self._failure_codes:
                raise
            async for response in self._afallback_stream(call.request, exc):
                yield response
            return
        if probe or self._failures:
            await self._arecord(probe, None)
