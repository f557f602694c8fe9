"""Several replicas sharing state through a real redis-server (issue 7's acceptance):

* three client processes share one circuit breaker: once one trips it against a dead
  server, the other two fail fast on their next call;
* three server processes (sync and asyncio) share one rate limit of R/s: under load
  spread over all three, the total admitted is R·t + B within 5%;
* Redis killed, or frozen, mid-run: calls go on under the configured policy, each within
  its deadline; when Redis returns, the shared state is used again (every pairing).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import grpc
import pytest

from apps.cache.protos import cache_pb2, cache_pb2_grpc
from benchmarks._common import spawned_server
from resilience.distributed.local_redis import LocalRedis, free_port
from tests.support.redis import redis_server, redis_settings  # noqa: F401 - a fixture
from tests.support.replicas import client_replicas
from tests.support.scripted import ScriptedServicer
from tests.support.servers import Pairing, make_settings

pytestmark = pytest.mark.timeout(90)
GET = "cache.CacheService/Get"
THREADS_PER_SERVER = 3


def test_three_client_processes_share_one_breaker(redis_server: LocalRedis) -> None:  # noqa: F811
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: every call fails with UNAVAILABLE
    values = redis_settings(
        redis_server, prefix="accept-breaker",
        CLIENT_MIDDLEWARE=["resilience.middleware.CircuitBreaker"],
        CLIENT_OPTIONS={"CircuitBreaker": {"storage": "redis", "fail_max": 5,
                                           "reset_timeout": 60.0,
                                           "state_cache_seconds": 0.1}},
    )
    with client_replicas(["sync", "aio", "sync"], values, dead) as (a, b, c):
        # b and c fail once each: the failures count in the one shared breaker.
        for replica in (b, c):
            status, details = replica.get()
            assert status == "UNAVAILABLE" and "circuit breaker" not in details
        tripped_after = None
        for n in range(1, 11):
            status, details = a.get()
            assert status == "UNAVAILABLE"
            if "circuit breaker" in details:
                tripped_after = n
                break
        assert tripped_after == 4  # 2 failures of b and c + 3 of a = fail_max, then open
        time.sleep(0.3)  # past state_cache_seconds
        for replica in (b, c):
            began = time.monotonic()
            status, details = replica.get()
            assert status == "UNAVAILABLE"
            assert "circuit breaker" in details and "is open" in details, details
            assert time.monotonic() - began < 1.0
    state = redis_server.client().hgetall(f"accept-breaker:breaker:{dead}:{GET}")
    assert state["state"] == "open"


def _hammer(address: str, start: threading.Barrier, window: list[float],
            counts: dict[str, int], lock: threading.Lock) -> None:
    """Connect to ``address``, wait for every thread, then call Get until the window ends;
    count admitted and rejected calls."""
    admitted = rejected = 0
    with grpc.insecure_channel(address) as channel:
        get = cache_pb2_grpc.CacheServiceStub(channel).Get
        # Warm up: the server builds its chain and connects to Redis on its first call.
        with contextlib.suppress(grpc.RpcError):
            get(cache_pb2.GetReq(key="k"), timeout=10.0)
        start.wait(30)
        stop = window[0] + window[1]
        first = time.monotonic()
        while time.monotonic() < stop:
            try:
                get(cache_pb2.GetReq(key="k"), timeout=2.0)
                admitted += 1
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    rejected += 1
                else:
                    admitted += 1  # NOT_FOUND for a missing key: the limit let it through
    with lock:
        counts["admitted"] += admitted
        counts["rejected"] += rejected
        window[2] = min(window[2], first)


def test_three_server_processes_share_one_rate_limit(redis_server: LocalRedis) -> None:  # noqa: F811
    rate, burst, seconds = 100.0, 50, 3.0
    values = redis_settings(
        redis_server, prefix="accept-limit",
        SERVER_MIDDLEWARE=["resilience.middleware.RateLimit"],
        SERVER_OPTIONS={"RateLimit": {"rate": rate, "burst": burst, "storage": "redis"}},
    )
    with contextlib.ExitStack() as stack:
        addresses = [
            stack.enter_context(spawned_server(kind, settings=values)).address
            for kind in ("sync", "aio", "sync")
        ]
        counts = {"admitted": 0, "rejected": 0}
        lock = threading.Lock()
        # [start, seconds, first call]: the start is set once every server is warm, and
        # the bucket the warm-up calls drew on is deleted: it starts full again.
        window = [0.0, seconds, float("inf")]
        r = redis_server.client()

        def begin() -> None:
            r.delete(*r.keys("accept-limit:*"))
            window[0] = time.monotonic()

        start = threading.Barrier(3 * THREADS_PER_SERVER, action=begin)
        threads = [
            threading.Thread(target=_hammer, args=(address, start, window, counts, lock))
            for address in addresses for _ in range(THREADS_PER_SERVER)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    # The bucket's time starts with the first call, which a loaded machine may delay.
    expected = rate * (window[0] + seconds - window[2]) + burst
    assert counts["rejected"] > counts["admitted"], counts  # the load was well above R
    assert abs(counts["admitted"] - expected) <= 0.05 * expected, (counts, expected)


def _timed_get(stub: Any, deadline_s: float = 1.0) -> tuple[str, str, float]:
    began = time.monotonic()
    try:
        stub.Get(cache_pb2.GetReq(key="k"), timeout=deadline_s)
        status, details = "OK", ""
    except grpc.RpcError as exc:
        status, details = exc.code().name, exc.details() or ""
    return status, details, time.monotonic() - began


def _outage_settings(server: LocalRedis, prefix: str, policy: str) -> Any:
    return make_settings(**redis_settings(
        server, prefix=prefix,
        CLIENT_MIDDLEWARE=["resilience.middleware.CircuitBreaker"],
        CLIENT_OPTIONS={"CircuitBreaker": {"storage": "redis", "redis_unavailable": policy,
                                           "state_cache_seconds": 0.05}},
        SERVER_MIDDLEWARE=["resilience.middleware.RateLimit"],
        SERVER_OPTIONS={"RateLimit": {"rate": 1000.0, "burst": 1000, "storage": "redis",
                                      "redis_unavailable": policy}},
    ))


def test_redis_outage_fail_open_keeps_serving_then_shared_state_resumes(
    pairing: Pairing, redis_server: LocalRedis,  # noqa: F811
) -> None:
    prefix = f"outage-{pairing.id}"
    settings = _outage_settings(redis_server, prefix, "fail_open")
    r = redis_server.client()
    with pairing.server(settings, ScriptedServicer()) as server, \
            pairing.client(settings, server.address) as stub:
        assert [_timed_get(stub)[0] for _ in range(5)] == ["OK"] * 5
        assert r.keys(f"{prefix}:ratelimit:*")

        redis_server.pause()  # connections hang: only REDIS_TIMEOUT gets a call out
        try:
            during = [_timed_get(stub) for _ in range(10)]
        finally:
            redis_server.resume()
        redis_server.kill()
        during += [_timed_get(stub) for _ in range(10)]
        assert [status for status, _, _ in during] == ["OK"] * 20, during
        assert max(elapsed for _, _, elapsed in during) < 1.0  # within every deadline

        redis_server.start()  # back, empty
        time.sleep(0.3)  # past REDIS_RETRY_INTERVAL
        r = redis_server.client()
        # The server's bucket is shared again, once a call finds Redis back (a pooled
        # connection to the killed Redis may cost one more retry interval).
        for _ in range(100):
            assert _timed_get(stub)[0] == "OK"
            if r.keys(f"{prefix}:ratelimit:*"):
                break
            time.sleep(0.05)
        assert r.keys(f"{prefix}:ratelimit:*")
        # So is the clients' breaker: open it in Redis and the client fails fast.
        now_ms = int(r.time()[0]) * 1000
        r.hset(f"{prefix}:breaker:{server.address}:{GET}",
               mapping={"state": "open", "opened_at": now_ms})
        time.sleep(0.1)  # past state_cache_seconds
        status, details, elapsed = _timed_get(stub)
        assert status == "UNAVAILABLE" and "is open" in details, details
        assert elapsed < 1.0


def test_redis_outage_fail_closed_rejects_promptly(
    pairing: Pairing, redis_server: LocalRedis,  # noqa: F811
) -> None:
    prefix = f"closed-{pairing.id}"
    settings = _outage_settings(redis_server, prefix, "fail_closed")
    server_only = make_settings(**{**settings.raw, "CLIENT_MIDDLEWARE": []})
    with pairing.server(settings, ScriptedServicer()) as server, \
            pairing.client(settings, server.address) as stub, \
            pairing.client(server_only, server.address) as plain:
        assert _timed_get(stub)[0] == "OK"
        redis_server.kill()
        time.sleep(0.1)  # past state_cache_seconds: the breaker asks Redis again
        for client, who in ((stub, "circuit breaker"), (plain, "rate limit")):
            outcomes = [_timed_get(client) for _ in range(5)]
            for status, details, elapsed in outcomes:
                assert status == "UNAVAILABLE", outcomes
                assert who in details and "fail_closed" in details, details
                assert elapsed < 1.0
        redis_server.start()
        time.sleep(0.3)
        assert _timed_get(stub)[0] == "OK"
