"""A CacheService whose behaviour a test scripts through the request key, for the sync
server (``ScriptedServicer``) and the asyncio one (``AsyncScriptedServicer``).

Keys are commands, so one servicer serves every behavioural test:
- ``sleep=0.5``: sleep that long, then answer (stops early if the client goes away);
- ``fail=UNAVAILABLE``: always fail with that status;
- ``fail=UNAVAILABLE*2``: fail the first two attempts with that key, then answer;
- ``notfound``: NOT_FOUND; any other key answers its own name as the value.
Every Get is counted per key, with the deadline the server saw and peak concurrency.

Both servicers keep their books in one ``Script``, and an async servicer made from a sync
one shares its books: a test reads ``servicer.attempts`` whichever server ran the calls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import grpc.aio

from apps.cache.protos import cache_pb2, cache_pb2_grpc


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one Get does, decided from its key and attempt: sleep, then fail or answer."""

    sleep: float = 0.0
    code: grpc.StatusCode | None = None
    details: str = ""


class Script:
    """The bookkeeping and the decisions both servicers share. Its lock is held only for a
    few counter updates, so taking it on an event loop is fine."""

    def __init__(self, dump_items: int = 10, dump_delay: float = 0.0) -> None:
        self.lock = threading.Lock()
        self.attempts: Counter[str] = Counter()
        self.time_remaining: dict[str, float | None] = {}
        self.in_flight = 0
        self.peak_in_flight = 0
        self.dump_items = dump_items
        self.dump_delay = dump_delay

    def begin(self, key: str, context: Any) -> int:
        """Count one Get with ``key`` as in flight; return which attempt with that key it is."""
        with self.lock:
            self.attempts[key] += 1
            self.time_remaining[key] = context.time_remaining()
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            return self.attempts[key]

    def end(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def begin_dump(self) -> None:
        with self.lock:
            self.attempts["dump"] += 1

    @staticmethod
    def plan(key: str, attempt: int) -> Plan:
        if key.startswith("sleep="):
            return Plan(sleep=float(key.split("=", 1)[1]))
        if key.startswith("fail="):
            name, _, times = key.split("=", 1)[1].partition("*")
            if not times or attempt <= int(times):
                return Plan(code=grpc.StatusCode[name],
                            details=f"scripted {name} on attempt {attempt}")
        elif key == "notfound":
            return Plan(code=grpc.StatusCode.NOT_FOUND, details="scripted not found")
        return Plan()

    @staticmethod
    def answer(key: str) -> cache_pb2.GetResp:
        return cache_pb2.GetResp(value=key.encode())

    @staticmethod
    def item(n: int) -> cache_pb2.DumpItem:
        return cache_pb2.DumpItem(key=f"k{n}", val=b"v")


class ScriptedServicer(Script, cache_pb2_grpc.CacheServiceServicer):
    """The sync servicer: its own ``Script``."""

    def Get(self, request: cache_pb2.GetReq, context: grpc.ServicerContext) -> Any:
        key = request.key
        plan = self.plan(key, self.begin(key, context))
        try:
            end = time.monotonic() + plan.sleep
            while time.monotonic() < end and context.is_active():
                time.sleep(0.005)
            if plan.code is not None:
                context.abort(plan.code, plan.details)
            return self.answer(key)
        finally:
            self.end()

    def Store(self, request: cache_pb2.StoreReq, context: grpc.ServicerContext) -> Any:
        self.Get(cache_pb2.GetReq(key=request.key), context)
        return cache_pb2.StoreResp()

    def Dump(self, request: cache_pb2.DumpReq, context: grpc.ServicerContext) -> Iterator[Any]:
        self.begin_dump()
        for n in range(self.dump_items):
            if self.dump_delay:
                time.sleep(self.dump_delay)
            yield self.item(n)


class AsyncScriptedServicer(cache_pb2_grpc.CacheServiceServicer):
    """The asyncio servicer, keeping its books in ``script`` (a ``ScriptedServicer`` to
    share its counters, or a fresh ``Script``). Its state reads through to the script.

    grpc.aio cancels the handler's task when the RPC ends early (cancelled, deadline
    passed), so a scripted sleep stops with CancelledError, which is left to propagate.
    """

    def __init__(self, script: Script | None = None) -> None:
        self.script = script if script is not None else Script()

    def __getattr__(self, name: str) -> Any:
        # Only reached for what this class lacks: attempts, in_flight, dump_items, ...
        return getattr(self.__dict__["script"], name)

    async def Get(self, request: cache_pb2.GetReq, context: grpc.aio.ServicerContext) -> Any:
        key = request.key
        script = self.script
        plan = script.plan(key, script.begin(key, context))
        try:
            if plan.sleep:
                await asyncio.sleep(plan.sleep)
            if plan.code is not None:
                await context.abort(plan.code, plan.details)
            return script.answer(key)
        finally:
            script.end()

    async def Store(self, request: cache_pb2.StoreReq, context: grpc.aio.ServicerContext
                    ) -> Any:
        await self.Get(cache_pb2.GetReq(key=request.key), context)
        return cache_pb2.StoreResp()

    async def Dump(self, request: cache_pb2.DumpReq, context: grpc.aio.ServicerContext
                   ) -> AsyncIterator[Any]:
        script = self.script
        script.begin_dump()
        for n in range(script.dump_items):
            if script.dump_delay:
                await asyncio.sleep(script.dump_delay)
            yield script.item(n)
