"""RateLimit with ``storage = "redis"``: one token bucket shared by every replica.

The chain factory builds this class instead of ``RateLimit`` when its options say so
(``RateLimit.variants``), so the local limit's per-call path is untouched. Each call is
one Redis round trip: the Lua script in ``resilience.distributed.token_bucket`` refills
the shared bucket and takes the token atomically, with Redis's clock, so N replicas
together admit ``rate * t + burst`` calls, not N times that.

Buckets are keyed by side, by target on the client (replicas of a server share, whatever
address each is bound to), by the scope (``key``: all methods, one method, or one
metadata value) and by rate and burst, as the local buckets are.

Redis unavailable: ``redis_unavailable = "fail_open"`` admits through this process's
local bucket (the one ``storage = "local"`` would use), so while Redis is down N replicas
admit up to N times the rate; ``"fail_closed"`` rejects every call with UNAVAILABLE
rather than RESOURCE_EXHAUSTED: the caller has not used up its quota, the service cannot
count it, and UNAVAILABLE is the status a client retries after a backoff (no pushback is
sent, since no token time is known).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc

from resilience.core.call import Call
from resilience.core.errors import RpcStatusError
from resilience.core.middleware import ChainInfo, Handler, MiddlewareOptions
from resilience.core.streams import end_early
from resilience.distributed import token_bucket
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
from resilience.middleware.ratelimit import RateLimit

#: max_wait_ms for a call without a deadline that is prepared to wait.
_FOREVER_MS = 10**12


class RedisRateLimit(RateLimit):
    """A ``RateLimit`` whose bucket is shared through Redis; see the module docstring.

    ``key`` is the Redis key of the bucket (its prefix, for ``key = "metadata"``).
    """

    def __init__(self, handler: Handler, options: MiddlewareOptions, info: ChainInfo) -> None:
        super().__init__(handler, options, info)
        opts = cast(RateLimit.Options, options)
        self._config = config_of(info, f"RateLimit on {info.method}")
        self._scope += ", shared by every replica"
        self._health = health(self._config)
        where = f"client:{info.target}" if info.side == "client" else "server"
        scope = {"server": "all", "method": f"method:{info.method}",
                 "metadata": f"metadata:{opts.metadata_key}"}[opts.key]
        self.key = (f"{self._config.key_prefix}:ratelimit:{where}:{scope}:{opts.rate!r}:"
                    f"{opts.burst}")
        self._per_value = opts.key == "metadata"
        self._rate_burst = token_bucket.arguments(opts.rate, opts.burst)[:3]
        self._fail_open = opts.redis_unavailable == "fail_open"
        self._script: Any = None if info.is_async else script(self._config, token_bucket.LUA)
        self._down_message = (
            f"rate limit for {self._scope} cannot reach its shared bucket in Redis and "
            f"redis_unavailable = 'fail_closed'"
        )
        # The local path for fail_open; RateLimit.__call__ is the asyncio path without wait.
        self._local_acall = self.acall if self._wait else functools.partial(RateLimit.__call__,
                                                                            self)
        self.acall = self._astream if info.kind.response_streaming else self._aunary

    def _request(self, call: Call) -> tuple[Any, list[str], list[Any]]:
        """The metadata value (or None), KEYS and ARGV for one call."""
        value = None
        key = self.key
        if self._per_value:
            value = self._value_of(call)
            if value is None:
                key += ":-"
            else:
                key += "=" + (value.decode("utf-8", "replace") if isinstance(value, bytes)
                              else value)
        max_wait = 0
        if self._wait:
            remaining = call.time_remaining()
            max_wait = _FOREVER_MS if remaining is None else max(0, int(remaining * 1000))
        return value, [key], [*self._rate_burst, max_wait, ""]

    def _decide(self, reply: Any, value: Any, args: list[Any]) -> float:
        """Seconds to wait before the call goes on; raise RESOURCE_EXHAUSTED if no token."""
        self._health.succeeded()
        taken, wait_ms = int(reply[0]), int(reply[1])
        if taken:
            return wait_ms / 1000
        why = (f"; waiting would pass this call's deadline in {args[3]} ms" if self._wait
               else "")
        raise self._rejection(wait_ms / 1000, value, why)

    def _unavailable(self, error: BaseException | None) -> None:
        """Redis failed (``error``) or is resting: raise unless failing open."""
        if error is not None:
            failed(self._config, error)
        if not self._fail_open:
            raise RpcStatusError(grpc.StatusCode.UNAVAILABLE, self._down_message,
                                 retryable=not self._client)

    def __call__(self, call: Call) -> Any:
        if not self._health.usable():
            self._unavailable(None)
            return RateLimit.__call__(self, call)
        value, keys, args = self._request(call)
        try:
            ready(self._config)
            reply = self._script(keys=keys, args=args)
        except REDIS_ERRORS as error:
            self._unavailable(error)
            return RateLimit.__call__(self, call)
        delay = self._decide(reply, value, args)
        if delay:
            self.sleep(delay)
        return self.handler(call)

    async def _ataken(self, call: Call) -> bool:
        """Take the shared token (waiting for it if so configured); False to go local."""
        if not self._health.usable():
            self._unavailable(None)
            return False
        value, keys, args = self._request(call)
        try:
            await aready(self._config)
            reply = await async_script(self._config, token_bucket.LUA)(keys=keys, args=args)
        except REDIS_ERRORS as error:
            failed(self._config, error)
            self._unavailable(None)
            return False
        delay = self._decide(reply, value, args)
        if delay:
            await self.asleep(delay)
        return True

    async def _aunary(self, call: Call) -> Any:
        if not await self._ataken(call):
            return await self._local_acall(call)
        return await self.handler(call)

    async def _astream(self, call: Call) -> AsyncIterator[Any]:
        """Take the token on the first read, then pass the responses on."""
        rpc = self.handler(call) if await self._ataken(call) else self._local_acall(call)
        responses = aiter(rpc)  # a grpc.aio stream call is iterable, not an iterator
        try:
            async for response in responses:
                yield response
        except GeneratorExit:
            await end_early(rpc, responses)
            raise


