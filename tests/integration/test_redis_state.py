"""The Redis-backed CircuitBreaker and RateLimit in process, against a real redis-server:
several instances stand for several processes (each has its own cache and local state,
and they meet only in Redis). Sync and asyncio paths; Redis killed and restarted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from resilience.conf.validation import run_checks
from resilience.core.call import Call, CallKind
from resilience.core.errors import BreakerOpenError, RpcStatusError
from resilience.core.loading import variant_for
from resilience.core.middleware import ChainInfo
from resilience.distributed.local_redis import LocalRedis
from resilience.distributed.shared_breaker import RedisCircuitBreaker
from resilience.distributed.shared_ratelimit import RedisRateLimit
from resilience.middleware import CircuitBreaker, RateLimit
from resilience.testing import build
from tests.support.redis import redis_server, redis_settings  # noqa: F401 - a fixture
from tests.support.servers import make_settings

pytestmark = pytest.mark.timeout(30)
GET = "cache.CacheService/Get"
UNAVAILABLE = RpcStatusError(grpc.StatusCode.UNAVAILABLE, "down")


def info(server: LocalRedis, name: str, *, is_async: bool = False, side: str = "client",
         **values: Any) -> ChainInfo:
    settings = make_settings(**redis_settings(server, **values))
    return ChainInfo(GET, CallKind.UNARY_UNARY, side, name, {"settings": settings},  # type: ignore[arg-type]
                     "127.0.0.1:1", is_async)


def call() -> Call:
    return Call(GET, CallKind.UNARY_UNARY, "client", None, deadline=time.monotonic() + 5)


class Handler:
    """A terminal that fails with UNAVAILABLE while ``failing``, and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.failing = False

    def __call__(self, c: Call) -> str:
        self.calls += 1
        if self.failing:
            raise UNAVAILABLE
        return "ok"

    async def acall(self, c: Call) -> str:
        return self(c)


def breakers(server: LocalRedis, n: int, is_async: bool = False, **options: Any
             ) -> tuple[list[Handler], list[Any]]:
    opts = CircuitBreaker.Options(**{"fail_max": 2, "reset_timeout": 5.0, "storage": "redis",
                                     "state_cache_seconds": 0.05, **options})
    handlers = [Handler() for _ in range(n)]
    made = [RedisCircuitBreaker(h.acall if is_async else h, opts,
                           info(server, "CircuitBreaker", is_async=is_async))
            for h in handlers]
    return handlers, made


def runner(is_async: bool) -> Callable[[Any], Any]:
    """Call a middleware once: its sync path, or its asyncio path on a fresh loop."""
    if not is_async:
        return lambda m: m(call())
    return lambda m: asyncio.run(m.acall(call()))


def test_local_storage_builds_the_local_class_and_redis_the_shared_one(
    redis_server: LocalRedis,  # noqa: F811
) -> None:
    assert variant_for(CircuitBreaker, CircuitBreaker.Options()) is CircuitBreaker
    redis = CircuitBreaker.Options(storage="redis")
    assert variant_for(CircuitBreaker, redis) is RedisCircuitBreaker
    assert variant_for(RedisCircuitBreaker, redis) is RedisCircuitBreaker
    _, [shared] = breakers(redis_server, 1)
    assert shared.key == f"test:breaker:127.0.0.1:1:{GET}"
    _, [named] = breakers(redis_server, 1, name="cache")
    assert named.key == f"test:breaker:cache:{GET}"
    assert variant_for(RateLimit, RateLimit.Options(storage="redis")) is RedisRateLimit
    assert variant_for(RateLimit, RateLimit.Options()) is RateLimit
    limit = build(RateLimit, Handler(), options={"storage": "redis"}, side="server",
                  shared=info(redis_server, "RateLimit").shared)
    assert type(limit) is RedisRateLimit


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "aio"])
def test_one_process_trips_the_breaker_and_the_others_fail_fast(
    redis_server: LocalRedis, is_async: bool,  # noqa: F811
) -> None:
    run = runner(is_async)
    handlers, (a, b, c) = breakers(redis_server, 3, is_async)
    for m in (b, c):
        assert run(m) == "ok"  # each has seen the shared state: closed
    handlers[0].failing = True
    for _ in range(2):
        with pytest.raises(RpcStatusError) as caught:
            run(a)
        assert not isinstance(caught.value, BreakerOpenError)
    assert a.state == "open"
    time.sleep(0.1)  # past b's and c's state_cache_seconds
    for m, h in ((b, handlers[1]), (c, handlers[2])):
        with pytest.raises(BreakerOpenError):
            run(m)
        assert h.calls == 1  # failed fast: the handler was not called again
        assert m.state == "open"


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "aio"])
def test_a_trial_from_any_process_closes_the_breaker_for_all(
    redis_server: LocalRedis, is_async: bool,  # noqa: F811
) -> None:
    run = runner(is_async)
    handlers, (a, b) = breakers(redis_server, 2, is_async, reset_timeout=0.2)
    handlers[0].failing = True
    for _ in range(2):
        with pytest.raises(RpcStatusError):
            run(a)
    time.sleep(0.3)
    assert run(b) == "ok"  # b's call was the trial, and closed the shared breaker
    assert b.state == "closed"
    time.sleep(0.1)
    handlers[0].failing = False
    assert run(a) == "ok"
    assert a.state == "closed"


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "aio"])
def test_redis_down_fail_open_uses_the_local_breaker_then_shared_state_resumes(
    redis_server: LocalRedis, is_async: bool,  # noqa: F811
) -> None:
    run = runner(is_async)
    handlers, (a,) = breakers(redis_server, 1, is_async, reset_timeout=30.0)
    assert run(a) == "ok"
    redis_server.kill()
    time.sleep(0.1)
    handlers[0].failing = True
    began = time.monotonic()
    for _ in range(2):
        with pytest.raises(RpcStatusError) as caught:
            run(a)
        assert not isinstance(caught.value, BreakerOpenError)
    with pytest.raises(BreakerOpenError):  # the local breaker opened after fail_max
        run(a)
    assert time.monotonic() - began < 2.0  # one short timeout, then the local breaker
    assert handlers[0].calls == 3
    redis_server.start()
    time.sleep(0.3)  # past REDIS_RETRY_INTERVAL
    handlers[0].failing = False
    assert run(a) == "ok"  # shared state again: closed in the fresh Redis
    assert a.state == "closed"


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "aio"])
def test_redis_down_fail_closed_fails_fast(
    redis_server: LocalRedis, is_async: bool,  # noqa: F811
) -> None:
    run = runner(is_async)
    handlers, (a,) = breakers(redis_server, 1, is_async, redis_unavailable="fail_closed")
    redis_server.kill()
    time.sleep(0.1)
    began = time.monotonic()
    for _ in range(5):
        with pytest.raises(BreakerOpenError, match="fail_closed"):
            run(a)
    assert time.monotonic() - began < 2.0
    assert handlers[0].calls == 0


def limits(server: LocalRedis, n: int, is_async: bool = False, **options: Any
           ) -> list[Any]:
    opts = RateLimit.Options(**{"rate": 1.0, "burst": 3, "storage": "redis", **options})
    return [RedisRateLimit(Handler().acall if is_async else Handler(), opts,
                      info(server, "RateLimit", is_async=is_async, side="server"))
            for _ in range(n)]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "aio"])
def test_rate_limit_is_shared_by_every_replica(
    redis_server: LocalRedis, is_async: bool,  # noqa: F811
) -> None:
    run = runner(is_async)
    outcomes = []
    for m in limits(redis_server, 3, is_async) * 2:
        try:
            outcomes.append(run(m))
        except RpcStatusError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert int(dict(exc.trailing_metadata())["grpc-retry-pushback-ms"]) > 900
            outcomes.append("rejected")
    assert outcomes == ["ok"] * 3 + ["rejected"] * 3


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "aio"])
def test_rate_limit_with_redis_down_fails_open_locally_or_closed(
    redis_server: LocalRedis, is_async: bool,  # noqa: F811
) -> None:
    run = runner(is_async)
    [open_] = limits(redis_server, 1, is_async)
    [closed] = limits(redis_server, 1, is_async, redis_unavailable="fail_closed")
    redis_server.kill()
    began = time.monotonic()
    # fail_open: this process's own bucket, burst 3.
    assert [run(open_) for _ in range(3)] == ["ok"] * 3
    with pytest.raises(RpcStatusError) as caught:
        run(open_)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(RpcStatusError) as caught:
        run(closed)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "fail_closed" in caught.value.details()
    assert time.monotonic() - began < 2.0


def stream_info(server: LocalRedis, name: str, is_async: bool, side: str) -> ChainInfo:
    settings = make_settings(**redis_settings(server))
    return ChainInfo("cache.CacheService/Dump", CallKind.UNARY_STREAM, side, name,  # type: ignore[arg-type]
                     {"settings": settings}, "127.0.0.1:1", is_async)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "aio"])
def test_streams_share_the_breaker_and_the_bucket(
    redis_server: LocalRedis, is_async: bool,  # noqa: F811
) -> None:
    failing = [False]

    def responses(c: Call) -> Any:
        yield 1
        if failing[0]:
            raise UNAVAILABLE
        yield 2

    async def aresponses(c: Call) -> Any:
        for item in responses(c):
            yield item

    def read(m: Any) -> list[Any]:
        if not is_async:
            return list(m(call()))

        async def collect() -> list[Any]:
            return [item async for item in m.acall(call())]

        return asyncio.run(collect())

    handler = aresponses if is_async else responses
    opts = CircuitBreaker.Options(fail_max=1, reset_timeout=5.0, storage="redis",
                                  state_cache_seconds=0.0)
    a, b = (RedisCircuitBreaker(handler, opts, stream_info(redis_server, "CircuitBreaker",
                                                      is_async, "client"))
            for _ in range(2))
    assert read(b) == [1, 2]
    failing[0] = True
    with pytest.raises(RpcStatusError):
        read(a)
    with pytest.raises(BreakerOpenError):
        read(b)
    limit_opts = RateLimit.Options(rate=1.0, burst=2, storage="redis")
    c, d = (RedisRateLimit(handler, limit_opts, stream_info(redis_server, "RateLimit",
                                                       is_async, "server"))
            for _ in range(2))
    failing[0] = False
    assert read(c) == [1, 2] and read(d) == [1, 2]
    with pytest.raises(RpcStatusError) as caught:
        read(c)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "shared by every replica" in caught.value.details()


def test_name_without_redis_storage_is_an_error() -> None:
    [problem] = CircuitBreaker.Options(name="cache").validate()
    assert "'name' is 'cache' but storage is 'local'" in problem
    assert CircuitBreaker.Options(name="cache", storage="redis").validate() == []


def check_ids(**values: Any) -> list[str]:
    settings = make_settings(
        CLIENT_OPTIONS={"CircuitBreaker": {"storage": "redis"}}, **values)
    _, messages = run_checks(settings)
    return [m.id for m in messages if m.id.startswith("resilience.E04")]


def test_check_reports_a_missing_or_malformed_redis_url() -> None:
    assert check_ids() == ["resilience.E040"]
    assert check_ids(REDIS_URL="localhost:6379") == ["resilience.E041"]
    assert check_ids(REDIS_URL="redis://127.0.0.1:6379/0") == []
    settings = make_settings(REDIS_URL="")
    assert not [m for m in run_checks(settings)[1] if m.id.startswith("resilience.E04")]
