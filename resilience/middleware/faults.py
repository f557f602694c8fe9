"""Inject faults on purpose, to see the rest of the stack cope: Envoy's fault filter and
Polly's Simmy chaos strategies as a middleware.

A configured fraction of calls is delayed, aborted with a chosen status, or both (delay
first, as Envoy does). With ``allow_metadata`` a caller can ask for a fault per call with
metadata, as with Envoy's ``x-envoy-fault-*`` headers; it is off by default because anyone
who can send metadata could then fail or slow the service.

Delays are real waits that respect the call's deadline: a delay that would run past it
waits only until the deadline and fails with DEADLINE_EXCEEDED, which is what a slow
server looks like. The asyncio path awaits ``asyncio.sleep``, so a cancelled caller ends
the wait; the sync server path wakes early if the RPC ends (cancelled, or its deadline
passed) while it waits. Streaming calls are faulted before the stream starts.

Injected aborts are ``retryable``, like real ones: the point is to exercise Retry,
CircuitBreaker and the callers behind them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import structlog

from resilience.core.call import Call
from resilience.core.errors import MiddlewareNotUsed, RpcStatusError, cancelled_status
from resilience.core.middleware import ChainInfo, Handler, Middleware, MiddlewareOptions, option
from resilience.core.streams import end_early
from resilience.faults import Fault, FaultDecider, parse_delay_ms, parse_status

log = structlog.get_logger(__name__)


class FaultInjection(Middleware):
    """Delay and/or abort a fraction of calls, or the calls whose metadata asks for it.

    Listed on the server it faults what the server answers (one stack, so ``methods``
    picks the methods); listed in a client chain it fails calls before any network
    attempt, and can be set per method with ``CLIENT_METHOD_OPTIONS``. Each chain (one per
    method) has its own random generator, seeded with ``seed`` when given.
    """

    async_capable = True

    @dataclasses.dataclass(frozen=True)
    class Options(MiddlewareOptions):
        abort_fraction: float = option(
            0.0, "Fraction of calls (0 to 1) failed with abort_code.", ge=0
        )
        abort_code: grpc.StatusCode = option(
            grpc.StatusCode.UNAVAILABLE, "Status name the aborted calls fail with; not OK."
        )
        delay_fraction: float = option(
            0.0, "Fraction of calls (0 to 1) delayed before they go on.", ge=0
        )
        delay_seconds: float | None = option(
            None, "Fixed delay in seconds; or set delay_min_seconds and delay_max_seconds.",
            gt=0,
        )
        delay_min_seconds: float | None = option(
            None, "Shortest delay of a uniformly random one, with delay_max_seconds.", ge=0
        )
        delay_max_seconds: float | None = option(
            None, "Longest delay of a uniformly random one, with delay_min_seconds.", gt=0
        )
        methods: tuple[str, ...] = option(
            (), "Full method names ('pkg.Service/Method') to fault; empty means all."
        )
        allow_metadata: bool = option(
            False,
            "Let callers ask for faults with the abort_header and delay_header metadata; "
            "keep it off wherever callers are not trusted.",
        )
        abort_header: str = option(
            "x-fault-abort", "Metadata key whose value (a status name or number) aborts."
        )
        delay_header: str = option(
            "x-fault-delay-ms", "Metadata key whose value (whole milliseconds) delays."
        )
        seed: int | None = option(
            None, "Seed of the random generator, for reproducible runs; unset for a random one."
        )

        def validate(self) -> list[str]:
            problems = []
            for name in ("abort_fraction", "delay_fraction"):
                value = getattr(self, name)
                if value > 1:
                    problems.append(
                        f"{name} is {value!r}; expected a fraction between 0 and 1 "
                        f"(0.1 means 10% of calls)"
                    )
            if self.abort_code is grpc.StatusCode.OK:
                problems.append(
                    "abort_code is 'OK'; an abort needs an error status such as 'UNAVAILABLE'"
                )
            fixed = self.delay_seconds
            low, high = self.delay_min_seconds, self.delay_max_seconds
            if fixed is not None and (low is not None or high is not None):
                problems.append(
                    f"delay_seconds ({fixed!r}) is set together with delay_min_seconds/"
                    f"delay_max_seconds ({low!r}/{high!r}); set a fixed delay or a range, "
                    f"not both"
                )
            elif (low is None) != (high is None):
                problems.append(
                    f"delay_min_seconds is {low!r} and delay_max_seconds is {high!r}; a "
                    f"random delay needs both (or set delay_seconds for a fixed one)"
                )
            elif low is not None and high is not None and low > high:
                problems.append(
                    f"delay_min_seconds ({low!r}) is above delay_max_seconds ({high!r}); "
                    f"swap them or raise delay_max_seconds"
                )
            elif self.delay_fraction > 0 and fixed is None and low is None:
                problems.append(
                    f"delay_fraction is {self.delay_fraction!r} but no delay is set; set "
                    f"delay_seconds, or delay_min_seconds and delay_max_seconds"
                )
            problems.extend(
                f"methods has {method!r}; expected a full method name such as "
                f"'cache.CacheService/Get'"
                for method in self.methods
                if "/" not in method.strip("/")
            )
            for name in ("abort_header", "delay_header"):
                value = getattr(self, name)
                if not value or value != value.lower() or value.endswith("-bin"):
                    problems.append(
                        f"{name} is {value!r}; expected a lower-case metadata key not "
                        f"ending in '-bin', such as 'x-fault-abort'"
                    )
            return problems

        def method_names(self) -> list[tuple[str, str]]:
            return [("methods", method.strip("/")) for method in self.methods]

    def __init__(self, handler: Handler, options: MiddlewareOptions, info: ChainInfo) -> None:
        super().__init__(handler, options, info)
        opts = cast(FaultInjection.Options, options)
        methods = {m.strip("/") for m in opts.methods}
        if methods and info.method not in methods:
            raise MiddlewareNotUsed(f"option 'methods' does not list {info.method}")
        if not (opts.abort_fraction or opts.delay_fraction or opts.allow_metadata):
            # Nothing could ever be injected: stay off the call path.
            raise MiddlewareNotUsed("nothing to inject: abort_fraction and delay_fraction "
                                    "are 0 and allow_metadata is false")
        if opts.delay_seconds is not None:
            low = high = opts.delay_seconds
        else:
            low, high = opts.delay_min_seconds or 0.0, opts.delay_max_seconds or 0.0
        self.decider = FaultDecider(
            rng=random.Random(opts.seed),
            abort_fraction=opts.abort_fraction,
            abort_code=opts.abort_code,
            delay_fraction=opts.delay_fraction,
            delay_min=low,
            delay_max=high,
        )
        self._headers = (opts.abort_header, opts.delay_header) if opts.allow_metadata else None
        self._server = info.side == "server"
        self._streaming = info.kind.response_streaming

    def _decide(self, call: Call) -> Fault | None:
        """This call's fault, from its metadata when allowed, else from the dice."""
        if self._headers is None:
            return self.decider.decide()
        abort_header, delay_header = self._headers
        abort = delay = None
        for key, value in call.metadata:
            try:
                if key == abort_header:
                    abort = parse_status(value)
                elif key == delay_header:
                    delay = parse_delay_ms(value)
            except ValueError as exc:
                log.warning("fault_metadata_ignored", method=call.method, key=key, error=str(exc))
        return self.decider.decide(abort, delay)

    def _announce(self, call: Call, fault: Fault) -> None:
        """The one log line (and count) of a faulted call, before the fault takes effect."""
        self.info.metrics.fault(fault.kind)
        log.info(
            "fault_injected",
            side=self.info.side,
            method=call.method,
            fault=fault.kind,
            code=fault.abort.name if fault.abort is not None else None,
            delay_ms=round(fault.delay * 1000, 1),
            source="metadata" if fault.requested else "random",
        )

    def _aborted(self, call: Call, code: grpc.StatusCode) -> RpcStatusError:
        return RpcStatusError(
            code, f"fault injected by FaultInjection: {call.method} aborted with {code.name}"
        )

    def _late(self, call: Call, delay: float) -> RpcStatusError:
        return RpcStatusError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"fault injected by FaultInjection: a {delay * 1000:.0f} ms delay of "
            f"{call.method} ran past the call's deadline",
        )

    def _bounded(self, call: Call, delay: float) -> tuple[float, bool]:
        """How long to wait, and whether the deadline comes first (then wait until it)."""
        if call.deadline is None:
            return delay, False
        remaining = call.deadline - time.monotonic()
        if delay < remaining:
            return delay, False
        return max(remaining, 0.0), True

    def __call__(self, call: Call) -> Any:
        fault = self._decide(call)
        if fault is None:
            return self.handler(call)
        self._announce(call, fault)
        if fault.delay:
            self._wait(call, fault.delay)
        if fault.abort is not None:
            raise self._aborted(call, fault.abort)
        return self.handler(call)  # a response stream starts only after the fault

    def _wait(self, call: Call, delay: float) -> None:
        """Sleep ``delay`` within the deadline; on the server, stop if the RPC ends."""
        seconds, late = self._bounded(call, delay)
        if self._server and call.context is not None:
            ended = threading.Event()
            if not call.context.add_callback(ended.set) or ended.wait(seconds):
                if cancelled_status(call.deadline) is grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise self._late(call, delay)
                raise RpcStatusError(
                    grpc.StatusCode.CANCELLED,
                    f"{call.method} ended during an injected delay",
                )
        else:
            time.sleep(seconds)
        if late:
            raise self._late(call, delay)

    def acall(self, call: Call) -> Any:
        """No fault: the layer below's awaitable or stream, untouched. A fault: a
        coroutine (or async generator) that applies it when awaited (or first read)."""
        fault = self._decide(call)
        if fault is None:
            return self.handler(call)
        self._announce(call, fault)
        return self._afault_stream(call, fault) if self._streaming else self._afault(call, fault)

    async def _apply(self, call: Call, fault: Fault) -> None:
        if fault.delay:
            seconds, late = self._bounded(call, fault.delay)
            await asyncio.sleep(seconds)  # cancellation of the caller ends the wait
            if late:
                raise self._late(call, fault.delay)
        if fault.abort is not None:
            raise self._aborted(call, fault.abort)

    async def _afault(self, call: Call, fault: Fault) -> Any:
        await self._apply(call, fault)
        return await self.handler(call)

    async def _afault_stream(self, call: Call, fault: Fault) -> AsyncIterator[Any]:
        await self._apply(call, fault)
        rpc = self.handler(call)
        responses = aiter(rpc)  # a grpc.aio stream call is iterable, not an iterator
        try:
            async for response in responses:
                yield response
        except GeneratorExit:
            await end_early(rpc, responses)
            raise
