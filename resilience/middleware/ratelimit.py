"""Admit at most ``rate`` calls per second, with bursts of up to ``burst``, per server or
channel, per method, or per value of a metadata key (a tenant).

On the server a call without a token is answered at once with RESOURCE_EXHAUSTED and a
``grpc-retry-pushback-ms`` trailer (gRFC A6): how long until a token is free, so a client
knows when a retry can succeed. On the client the call fails locally the same way
(``retryable=False``: Retry does not hammer a limit this process set), or, with
``wait = true``, waits for its token, but never past the call's deadline.

The bucket is a pure ``TokenBucket`` (``resilience.limits.token_bucket``); each use holds a
thread lock for a few arithmetic steps and never across a wait, so the asyncio path takes
the same lock without blocking the loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import threading
import time
from collections.abc import AsyncIterator
from typing import Any, Literal, cast

import grpc

from resilience.core.call import Call
from resilience.core.errors import PUSHBACK_KEY, RpcStatusError
from resilience.core.middleware import ChainInfo, Handler, Middleware, MiddlewareOptions, option
from resilience.core.streams import end_early
from resilience.limits.token_bucket import KeyedBuckets, TokenBucket


class RateLimit(Middleware):
    """A token bucket in front of the handler: one token per call (per stream, at its start).

    ``bucket`` is the bucket (``key`` "server" or "method"), ``keyed`` the per-value
    buckets (``key`` "metadata"); the other is ``None``. ``clock`` (class attribute, for
    tests), ``sleep`` and ``asleep`` can be replaced.
    """

    async_capable = True
    # Built instead by the composition root (ChainFactory) for storage = "redis": by name,
    # since the shared limit, a layer above, subclasses this one.
    variants = {"storage": {"redis": "resilience.distributed.shared_ratelimit.RedisRateLimit"}}
    clock = staticmethod(time.monotonic)

    @dataclasses.dataclass(frozen=True)
    class Options(MiddlewareOptions):
        rate: float = option(100.0, "Tokens added per second: the calls per second allowed "
                                    "in the long run.", gt=0)
        burst: int = option(10, "Bucket size: calls admitted at once after a quiet spell; "
                                "the bucket starts full.", ge=1)
        key: Literal["server", "method", "metadata"] = option(
            "server",
            "'server': one bucket for every method of the server (or channel); 'method': one "
            "per method; 'metadata': one per value of the metadata_key request header.",
        )
        metadata_key: str = option(
            "", "Request metadata key whose value picks the bucket when key = 'metadata', "
                "e.g. 'x-tenant'; calls without it share one bucket of their own."
        )
        max_keys: int = option(
            10_000, "Most metadata values with a bucket at once; the least recently used "
                    "is dropped beyond it.", ge=1
        )
        wait: bool = option(
            False, "Client only: wait for a token (never past the deadline) instead of "
                   "failing at once."
        )
        storage: Literal["local", "redis"] = option(
            "local",
            "'local': buckets in this process; 'redis': one bucket per scope shared by "
            "every replica through REDIS_URL (one Redis round trip per call).",
        )
        redis_unavailable: Literal["fail_open", "fail_closed"] = option(
            "fail_open",
            "storage = 'redis' only: while Redis cannot be reached, 'fail_open' admits "
            "through this process's local bucket; 'fail_closed' rejects with UNAVAILABLE.",
        )

        def validate(self) -> list[str]:
            problems = []
            if self.key == "metadata" and not self.metadata_key:
                problems.append(
                    "key is 'metadata' but metadata_key is empty; set metadata_key to the "
                    "request header that names the caller, e.g. 'x-tenant'"
                )
            if self.metadata_key and self.key != "metadata":
                problems.append(
                    f"metadata_key is {self.metadata_key!r} but key is {self.key!r}, so it "
                    f"would be ignored; set key = 'metadata' or remove metadata_key"
                )
            if self.metadata_key != self.metadata_key.lower():
                problems.append(
                    f"metadata_key {self.metadata_key!r} has capitals, but gRPC sends "
                    f"metadata keys in lower case; write {self.metadata_key.lower()!r}"
                )
            return problems

    def __init__(self, handler: Handler, options: MiddlewareOptions, info: ChainInfo) -> None:
        super().__init__(handler, options, info)
        opts = cast(RateLimit.Options, options)
        clock = self.clock
        self.sleep = time.sleep
        self.asleep = asyncio.sleep
        where = "server" if info.side == "server" else "channel"
        place = f"this {where}" + (f" ({info.target})" if info.target else "")
        self.bucket: TokenBucket | None = None
        self.keyed: KeyedBuckets | None = None
        if opts.key == "method":
            self._lock = threading.Lock()
            self.bucket = TokenBucket(opts.rate, opts.burst, clock)
            self._scope = f"method {info.method}"
        elif opts.key == "server":
            # setdefault is atomic, so chains built concurrently still share one bucket.
            # Chains given other rates (client per-method options) get a bucket of their own.
            self._lock, self.bucket = info.shared.setdefault(
                f"ratelimit:{info.name}:{opts.rate!r}:{opts.burst}",
                (threading.Lock(), TokenBucket(opts.rate, opts.burst, clock)),
            )
            self._scope = f"all methods of {place}"
        else:
            self._lock, self.keyed = info.shared.setdefault(
                f"ratelimit:{info.name}:{opts.rate!r}:{opts.burst}:{opts.metadata_key}"
                f":{opts.max_keys}",
                (threading.Lock(), KeyedBuckets(opts.rate, opts.burst, opts.max_keys, clock)),
            )
            self._scope = f"each '{opts.metadata_key}' value on {place}"
            self._anonymous_scope = f"calls without '{opts.metadata_key}' on {place}"
        self._metadata_key = opts.metadata_key
        self._limit = f"{opts.rate:g} calls/s with bursts of {opts.burst}"
        self._client = info.side == "client"
        self._wait = opts.wait and self._client  # a server that waited would be a queue
        if not self._wait:
            self.acall = self.__call__
        elif info.kind.response_streaming:
            self.acall = self._astream_wait
        else:
            self.acall = self._aunary_wait

    def __call__(self, call: Call) -> Any:
        """Take a token or raise RESOURCE_EXHAUSTED, then pass the call on. The handler's
        result (a response, an iterator, an awaitable or an async iterator) is returned as
        is, so without ``wait`` this is the asyncio path too."""
        if self._wait:
            delay = self._reserve(call)
            if delay:
                self.sleep(delay)
            return self.handler(call)
        lock = self._lock
        bucket = self.bucket
        if bucket is None:
            value = self._value_of(call)
            lock.acquire()
            bucket = cast(KeyedBuckets, self.keyed).get(value)
        else:
            value = None
            lock.acquire()
        if bucket.try_take():
            lock.release()
            return self.handler(call)
        wait = bucket.wait_time()
        lock.release()
        raise self._rejection(wait, value)

    def _reserve(self, call: Call) -> float:
        """Book a token and return the seconds to wait for it; raise RESOURCE_EXHAUSTED at
        once, taking nothing, if the wait would end after the call's deadline."""
        now = self.clock()
        max_wait = math.inf if call.deadline is None else max(0.0, call.deadline - now)
        keyed = self.keyed
        value = None if keyed is None else self._value_of(call)
        with self._lock:
            bucket = cast(TokenBucket, self.bucket) if keyed is None else keyed.get(value)
            delay = bucket.reserve(1, max_wait)
            if delay is not None:
                return delay
            wait = bucket.wait_time()
        raise self._rejection(
            wait, value, f"; waiting would pass this call's deadline in {max_wait * 1000:.0f} ms"
        )

    async def _aunary_wait(self, call: Call) -> Any:
        delay = self._reserve(call)
        if delay:
            await self.asleep(delay)
        return await self.handler(call)

    def _astream_wait(self, call: Call) -> Any:
        """Book the token at the start, like the sync path; wait when first read."""
        delay = self._reserve(call)
        if not delay:
            return self.handler(call)
        return self._delayed_stream(call, delay)

    async def _delayed_stream(self, call: Call, delay: float) -> AsyncIterator[Any]:
        await self.asleep(delay)
        rpc = self.handler(call)
        responses = aiter(rpc)  # a grpc.aio stream call is iterable, not an iterator
        try:
            async for response in responses:
                yield response
        except GeneratorExit:
            await end_early(rpc, responses)
            raise

    def _value_of(self, call: Call) -> Any:
        key = self._metadata_key
        for name, value in call.metadata or ():
            if name == key:
                return value
        return None

    def _rejection(self, wait: float, value: Any, why: str = "") -> RpcStatusError:
        self.info.metrics.rejected("rate_limit")
        ms = max(1, math.ceil(wait * 1000))
        anonymous = self.keyed is not None and value is None
        scope = self._anonymous_scope if anonymous else self._scope
        where = " (rejected by this client)" if self._client else ""
        return RpcStatusError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"rate limit exceeded: {self._limit} for {scope}{where}; the next token is free "
            f"in {ms} ms{why}",
            trailing_metadata=((PUSHBACK_KEY, str(ms)),),
            retryable=not self._client,
        )
