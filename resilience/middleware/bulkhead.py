"""Bulkheads: methods in separate compartments, so that slow calls of one group (reports)
cannot take every slot, or every thread, that another group (fast updates) needs.

Each group has its own semaphore, shared by the group's methods on one server (or
channel). A call takes a slot, waiting at most ``max_wait`` (never past its deadline), or
gets RESOURCE_EXHAUSTED naming its group. On the sync server a group can also have
threads of its own, which run the rest of the stack while grpc's worker waits.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import structlog

from resilience.core.call import Call
from resilience.core.errors import RpcStatusError
from resilience.core.middleware import ChainInfo, Handler, Middleware, MiddlewareOptions, option
from resilience.core.spelling import did_you_mean
from resilience.core.streams import ReleasingIterator, release_once

log = structlog.get_logger(__name__)

_END = object()




class Compartment:
    """One group's slots and, on the sync server, its threads; shared by every method of
    the group on one server or channel (``ChainInfo.shared``).

    In an asyncio chain the semaphore is an ``asyncio.Semaphore``, which binds to the
    event loop of its first wait: a grpc.aio server or channel runs on one loop.
    """

    __slots__ = ("executor", "limit", "name", "semaphore")

    def __init__(self, name: str, limit: int, threads: int, is_async: bool) -> None:
        self.name = name
        self.limit = limit
        self.semaphore: Any = asyncio.Semaphore(limit) if is_async else threading.Semaphore(limit)
        # ThreadPoolExecutor starts its threads on demand, so a spare one costs nothing.
        self.executor = (
            ThreadPoolExecutor(threads, thread_name_prefix=f"bulkhead-{name}") if threads else None
        )

    @property
    def in_flight(self) -> int:
        # Both semaphores keep their free slots in _value; reading it costs the calls nothing.
        return self.limit - self.semaphore._value


class _OnExecutor:
    """A response stream whose every step (the handler's code between two responses) runs
    on ``executor``, while the calling grpc worker waits for it."""

    __slots__ = ("_context", "_executor", "_responses")

    def __init__(self, executor: ThreadPoolExecutor, handler: Handler, call: Call) -> None:
        self._executor = executor
        self._context = contextvars.copy_context()
        self._responses = executor.submit(self._context.run, _start, handler, call).result()

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        item = self._executor.submit(self._context.run, next, self._responses, _END).result()
        if item is _END:
            raise StopIteration
        return item

    def close(self) -> None:
        close = getattr(self._responses, "close", None)
        if close is not None:
            close()


def _start(handler: Handler, call: Call) -> Iterator[Any]:
    return iter(handler(call))


class Bulkhead(Middleware):
    """Semaphore isolation per group of methods, plus thread isolation on the sync server."""

    async_capable = True

    @dataclasses.dataclass(frozen=True)
    class Options(MiddlewareOptions):
        groups: dict[str, tuple[str, ...]] | None = option(
            None,
            "Group name -> full method names sharing one compartment; a method in no group "
            "is a group of its own, named after the method.",
        )
        max_concurrent: int = option(10, "Calls in flight at once per group.", ge=1)
        limits: dict[str, int] | None = option(
            None, "Per-group overrides of max_concurrent, by group (or method) name."
        )
        max_wait: float = option(
            0.0,
            "Seconds a call may wait for a slot (never past its deadline); 0 rejects at once.",
            ge=0,
        )
        executor_threads: dict[str, int] | None = option(
            None,
            "Sync server only: group -> threads of its own that run the group's handlers.",
        )

        def group_of(self, method: str) -> str:
            """The group ``method`` belongs to: the one listing it, or its own."""
            groups = self.groups or {}
            return next((g for g, methods in groups.items() if method in methods), method)

        def limit_of(self, group: str) -> int:
            return (self.limits or {}).get(group, self.max_concurrent)

        def method_names(self) -> list[tuple[str, str]]:
            """Group members, and the method names (with a '/') that limits and
            executor_threads give a method's own group."""
            names = [("groups", m) for members in (self.groups or {}).values() for m in members]
            for option_name in ("limits", "executor_threads"):
                table: Mapping[str, int] = getattr(self, option_name) or {}
                names += [(option_name, key) for key in table if "/" in key]
            return names

        def validate(self) -> list[str]:
            problems = []
            groups = self.groups or {}
            owner: dict[str, str] = {}
            for group, methods in groups.items():
                if "/" in group:
                    problems.append(
                        f"option 'groups' has a group named {group!r}; a '/' marks a "
                        "method's own group, so group names must not contain one; rename it"
                    )
                if not methods:
                    problems.append(
                        f"option 'groups': group {group!r} lists no methods; list full "
                        "method names such as 'cache.CacheService/Dump', or remove it"
                    )
                for method in methods:
                    service, slash, name = method.partition("/")
                    if not (service and slash and name) or "/" in name:
                        problems.append(
                            f"option 'groups': group {group!r} lists {method!r}; expected a "
                            "full method name 'package.Service/Method'"
                        )
                    elif owner.setdefault(method, group) != group:
                        problems.append(
                            f"option 'groups' puts {method} in both {owner[method]!r} and "
                            f"{group!r}; a method belongs to one group: remove it from one"
                        )
            for name in ("limits", "executor_threads"):
                table: Mapping[str, int] = getattr(self, name) or {}
                for group, value in table.items():
                    if group not in groups and "/" not in group:
                        known = ", ".join(sorted(groups)) or "none"
                        problems.append(
                            f"option '{name}' names group {group!r}, which is not in "
                            f"'groups' (groups: {known}){did_you_mean(group, groups)}; name "
                            "a group from 'groups', or a full method name for a method's "
                            "own group"
                        )
                    if value < 1:
                        problems.append(
                            f"option '{name}' gives group {group!r} {value}; expected a "
                            "whole number >= 1"
                        )
            for group, threads in (self.executor_threads or {}).items():
                limit = self.limit_of(group)
                if 1 <= threads < limit:
                    problems.append(
                        f"option 'executor_threads' gives group {group!r} {threads} threads "
                        f"for {limit} calls in flight: admitted calls would queue for a "
                        f"thread with no bound on the wait; give it at least {limit} threads "
                        "or lower its limit"
                    )
            return problems

    options: Options

    def __init__(self, handler: Handler, options: MiddlewareOptions, info: ChainInfo) -> None:
        super().__init__(handler, options, info)
        opts = self.options
        group = opts.group_of(info.method)
        on_sync_server = info.side == "server" and not info.is_async
        threads = (opts.executor_threads or {}).get(group, 0) if on_sync_server else 0
        if opts.executor_threads and not on_sync_server:
            self._note_executors_unused(info)
        key = f"bulkhead:{info.name}:{group}"
        self.compartment: Compartment = info.shared.get(key) or info.shared.setdefault(
            key, Compartment(group, opts.limit_of(group), threads, info.is_async)
        )
        self._semaphore = self.compartment.semaphore
        compartment = self.compartment
        info.metrics.watch_limiter(f"{info.name}:{group}", lambda: compartment.limit,
                                   lambda: compartment.in_flight)
        self._executor = self.compartment.executor
        self._max_wait = opts.max_wait
        self._streaming = info.kind.response_streaming
        # Only a server's context says when the RPC ends; a client's carries call options.
        self._server = info.side == "server"
        self.acall = self._astream if self._streaming else self._aunary

    @property
    def group(self) -> str:
        return self.compartment.name

    @property
    def limit(self) -> int:
        return self.compartment.limit

    @property
    def in_flight(self) -> int:
        return self.compartment.in_flight

    @staticmethod
    def _note_executors_unused(info: ChainInfo) -> None:
        """Say once per server or channel why ``executor_threads`` does nothing here."""
        key = f"bulkhead:{info.name}:executors-noted"
        if key in info.shared:
            return
        info.shared[key] = True
        where = "the asyncio server" if info.side == "server" else "a client"
        log.info("bulkhead_executor_threads_unused", where=where,
                 reason="handlers run on grpc's own threads or event loop; the semaphores "
                        "still isolate the groups")

    # --- the sync path ---------------------------------------------------------------------

    def __call__(self, call: Call) -> Any:
        semaphore = self._semaphore
        if not semaphore.acquire(False):
            self._wait(call)
        if self._streaming:
            return self._stream(call)
        try:
            if self._executor is None:
                return self.handler(call)
            context = contextvars.copy_context()
            return self._executor.submit(context.run, self.handler, call).result()
        finally:
            semaphore.release()

    def _wait(self, call: Call) -> None:
        """Wait for a slot up to ``max_wait`` and the deadline, or raise RESOURCE_EXHAUSTED."""
        timeout = self._timeout(call)
        if timeout <= 0 or not self._semaphore.acquire(timeout=timeout):
            raise self._rejection(timeout)

    def _stream(self, call: Call) -> ReleasingIterator:
        release = release_once(self._semaphore.release)
        if self._server and call.context is not None:
            # A cancelled client may leave the stream unconsumed; grpc still runs this.
            call.context.add_callback(release)
        try:
            if self._executor is None:
                responses = self.handler(call)
            else:
                responses = _OnExecutor(self._executor, self.handler, call)
        except BaseException:
            release()
            raise
        return ReleasingIterator(responses, release)

    # --- the asyncio path ------------------------------------------------------------------

    async def _aunary(self, call: Call) -> Any:
        semaphore = self._semaphore
        if semaphore.locked():
            await self._await_slot(call)
        else:
            await semaphore.acquire()  # a free slot: returns without suspending
        try:
            return await self.handler(call)
        finally:  # cancellation of the awaiting task included
            semaphore.release()

    async def _astream(self, call: Call) -> AsyncIterator[Any]:
        semaphore = self._semaphore
        if semaphore.locked():
            await self._await_slot(call)
        else:
            await semaphore.acquire()
        release = release_once(semaphore.release)
        if self._server and call.context is not None:
            # grpc.aio calls done callbacks on the loop when the RPC ends, read or not.
            call.context.add_done_callback(lambda _context: release())
        try:
            responses = self.handler(call)
            try:
                async for response in responses:
                    yield response
            finally:
                aclose = getattr(responses, "aclose", None)
                if aclose is not None:
                    await aclose()
        finally:  # end, error, cancellation, or aclose() of an abandoned stream
            release()

    async def _await_slot(self, call: Call) -> None:
        """Wait on the loop for a slot up to ``max_wait`` and the deadline, or raise."""
        timeout = self._timeout(call)
        if timeout > 0:
            try:
                async with asyncio.timeout(timeout):
                    await self._semaphore.acquire()
                return
            except TimeoutError:
                pass
        raise self._rejection(timeout)

    # --- shared ----------------------------------------------------------------------------

    def _timeout(self, call: Call) -> float:
        if call.deadline is None:
            return self._max_wait
        return min(self._max_wait, call.deadline - time.monotonic())

    def _rejection(self, waited: float) -> RpcStatusError:
        self.info.metrics.rejected("bulkhead")
        compartment = self.compartment
        after = f" after waiting {waited:.3g}s" if waited > 0 else ""
        return RpcStatusError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"bulkhead '{compartment.name}' is full: {compartment.limit} calls in flight"
            f"{after}; retry later",
        )
