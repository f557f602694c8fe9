"""A CacheService whose behaviour a test scripts through the request key.

Keys are commands, so one servicer serves every behavioural test:
- ``sleep=0.5``: sleep that long, then answer (stops early if the client goes away);
- ``fail=UNAVAILABLE``: always fail with that status;
- ``fail=UNAVAILABLE*2``: fail the first two attempts with that key, then answer;
- ``notfound``: NOT_FOUND; any other key answers its own name as the value.
Every Get is counted per key, with the deadline the server saw and peak concurrency.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc

from apps.cache.protos import cache_pb2, cache_pb2_grpc


class ScriptedServicer(cache_pb2_grpc.CacheServiceServicer):
    def __init__(self, dump_items: int = 10, dump_delay: float = 0.0) -> None:
        self.lock = threading.Lock()
        self.attempts: Counter[str] = Counter()
        self.time_remaining: dict[str, float | None] = {}
        self.in_flight = 0
        self.peak_in_flight = 0
        self.dump_items = dump_items
        self.dump_delay = dump_delay

    def Get(self, request: cache_pb2.GetReq, context: grpc.ServicerContext) -> Any:
        key = request.key
        with self.lock:
            self.attempts[key] += 1
            attempt = self.attempts[key]
            self.time_remaining[key] = context.time_remaining()
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return self._answer(key, attempt, context)
        finally:
            with self.lock:
                self.in_flight -= 1

    def _answer(self, key: str, attempt: int, context: grpc.ServicerContext) -> Any:
        if key.startswith("sleep="):
            end = time.monotonic() + float(key.split("=", 1)[1])
            while time.monotonic() < end and context.is_active():
                time.sleep(0.005)
        elif key.startswith("fail="):
            spec = key.split("=", 1)[1]
            name, _, times = spec.partition("*")
            if not times or attempt <= int(times):
                context.abort(grpc.StatusCode[name], f"scripted {name} on attempt {attempt}")
        elif key == "notfound":
            context.abort(grpc.StatusCode.NOT_FOUND, "scripted not found")
        return cache_pb2.GetResp(value=key.encode())

    def Store(self, request: cache_pb2.StoreReq, context: grpc.ServicerContext) -> Any:
        return self.Get(cache_pb2.GetReq(key=request.key), context) and cache_pb2.StoreResp()

    def Dump(self, request: cache_pb2.DumpReq, context: grpc.ServicerContext) -> Iterator[Any]:
        with self.lock:
            self.attempts["dump"] += 1
        for n in range(self.dump_items):
            if self.dump_delay:
                time.sleep(self.dump_delay)
            yield cache_pb2.DumpItem(key=f"k{n}", val=b"v")
