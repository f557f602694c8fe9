"""The CacheService, sync and asyncio: validation at the edge, storage in ``MemoryStore``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import grpc.aio

from apps.cache.protos import cache_pb2, cache_pb2_grpc
from apps.cache.storage import MemoryStore

DEFAULT_MAX_VALUE_BYTES = 1_048_576
DEFAULT_MAX_KEY_BYTES = 1024
_SHOWN_KEY_CHARS = 64


def shown_key(key: str) -> str:
    """The key as error messages show it: cut short, so a huge key cannot bloat a status."""
    if len(key) <= _SHOWN_KEY_CHARS:
        return key
    return key[:_SHOWN_KEY_CHARS] + "..."


def key_problem(key: str, max_key_bytes: int) -> str | None:
    """Why ``key`` is not acceptable, or None if it is."""
    if not key:
        return "key must not be empty"
    size = len(key.encode("utf-8"))
    if size > max_key_bytes:
        return (
            f"key {shown_key(key)!r} is {size} bytes; "
            f"the limit is {max_key_bytes} (CACHE_MAX_KEY_BYTES)"
        )
    return None


def value_problem(value: bytes, max_value_bytes: int) -> str | None:
    """Why ``value`` is not acceptable, or None if it is; never quotes the value itself."""
    if len(value) > max_value_bytes:
        return (
            f"value is {len(value)} bytes; the limit is {max_value_bytes} (CACHE_MAX_VALUE_BYTES)"
        )
    return None


class CacheRules:
    """What the sync and the async servicer share: one store, the size limits from the
    settings, and why a request is refused. Only the calls to ``context.abort`` differ."""

    def __init__(self, settings: Any, store: MemoryStore | None = None) -> None:
        self.max_value_bytes: int = settings.get("CACHE_MAX_VALUE_BYTES", DEFAULT_MAX_VALUE_BYTES)
        self.max_key_bytes: int = settings.get("CACHE_MAX_KEY_BYTES", DEFAULT_MAX_KEY_BYTES)
        self.store = store if store is not None else MemoryStore()

    def problem(self, key: str, value: bytes = b"") -> str | None:
        """Why a request with ``key`` (and ``value``) is INVALID_ARGUMENT, or None."""
        return key_problem(key, self.max_key_bytes) or value_problem(value, self.max_value_bytes)

    @staticmethod
    def not_found(key: str) -> str:
        return f"key {shown_key(key)!r} not found"


class CacheServicer(CacheRules, cache_pb2_grpc.CacheServiceServicer):
    """Serves one ``MemoryStore`` to the sync server."""

    def Get(self, request: cache_pb2.GetReq, context: grpc.ServicerContext) -> cache_pb2.GetResp:
        if (problem := self.problem(request.key)) is not None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        value = self.store.get(request.key)
        if value is None:
            context.abort(grpc.StatusCode.NOT_FOUND, self.not_found(request.key))
        return cache_pb2.GetResp(value=value)

    def Store(
        self, request: cache_pb2.StoreReq, context: grpc.ServicerContext
    ) -> cache_pb2.StoreResp:
        if (problem := self.problem(request.key, request.value)) is not None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        self.store.put(request.key, request.value)
        return cache_pb2.StoreResp()

    def Dump(
        self, request: cache_pb2.DumpReq, context: grpc.ServicerContext
    ) -> Iterator[cache_pb2.DumpItem]:
        for key, value in self.store.items():
            yield cache_pb2.DumpItem(key=key, val=value)


class AsyncCacheServicer(CacheRules, cache_pb2_grpc.CacheServiceServicer):
    """Serves one ``MemoryStore`` to the asyncio server. The store's lock is held only for
    a dict operation, so taking it on the event loop is fine."""

    async def Get(
        self, request: cache_pb2.GetReq, context: grpc.aio.ServicerContext
    ) -> cache_pb2.GetResp:
        if (problem := self.problem(request.key)) is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        value = self.store.get(request.key)
        if value is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, self.not_found(request.key))
        return cache_pb2.GetResp(value=value)

    async def Store(
        self, request: cache_pb2.StoreReq, context: grpc.aio.ServicerContext
    ) -> cache_pb2.StoreResp:
        if (problem := self.problem(request.key, request.value)) is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        self.store.put(request.key, request.value)
        return cache_pb2.StoreResp()

    async def Dump(
        self, request: cache_pb2.DumpReq, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cache_pb2.DumpItem]:
        for key, value in self.store.items():
            yield cache_pb2.DumpItem(key=key, val=value)
