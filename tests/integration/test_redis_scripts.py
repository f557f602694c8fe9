"""The Lua scripts against a real redis-server, driven with an injected clock (``now_ms``),
and the connection's health state: exact sequences, as for the local algorithms."""

from __future__ import annotations

import pytest
import redis
from structlog.testing import capture_logs

from resilience.distributed import breaker_state, token_bucket
from resilience.distributed.breaker_state import BreakerReply
from resilience.distributed.connection import Health, redacted, url_problem
from resilience.distributed.local_redis import LocalRedis
from tests.support.redis import redis_server  # noqa: F401 - a fixture

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def r(redis_server: LocalRedis) -> redis.Redis:  # noqa: F811
    return redis_server.client()


def take(r: redis.Redis, now: int, *, rate: float = 10.0, burst: int = 3, n: float = 1,
         max_wait_ms: int = 0, key: str = "bucket") -> tuple[int, int]:
    taken, wait = r.register_script(token_bucket.LUA)(
        keys=[key], args=token_bucket.arguments(rate, burst, n, max_wait_ms, now))
    return int(taken), int(wait)


def test_bucket_starts_full_then_refills_at_the_rate_in_milliseconds(r: redis.Redis) -> None:
    assert [take(r, 1000) for _ in range(4)] == [(1, 0), (1, 0), (1, 0), (0, 100)]
    assert take(r, 1099) == (0, 1)  # 0.99 tokens: 1 ms to go
    assert take(r, 1100) == (1, 0)
    assert take(r, 1100) == (0, 100)
    # A long quiet spell refills to burst, never beyond.
    assert [take(r, 60_000) for _ in range(4)] == [(1, 0), (1, 0), (1, 0), (0, 100)]


def test_bucket_reserves_when_the_wait_is_allowed_and_goes_below_zero(r: redis.Redis) -> None:
    for _ in range(3):
        take(r, 0)
    assert take(r, 0, max_wait_ms=100) == (1, 100)
    assert take(r, 0, max_wait_ms=150) == (0, 200)  # taking nothing
    assert take(r, 0, max_wait_ms=200) == (1, 200)
    # 300 ms refill three tokens: two pay for the booked ones, one is left.
    assert [take(r, 300), take(r, 300)] == [(1, 0), (0, 100)]


def test_bucket_key_expires_once_it_would_be_full_again(r: redis.Redis) -> None:
    take(r, 0)
    ttl = r.pttl("bucket")
    assert 1000 < ttl <= 1100  # 100 ms to refill one token, plus a second


def test_bucket_survives_a_script_flush(r: redis.Redis) -> None:
    script = r.register_script(token_bucket.LUA)
    assert script(keys=["b"], args=token_bucket.arguments(1.0, 1, 1, 0, 0)) == [1, 0]
    r.script_flush()  # what a Redis restart does to loaded scripts: NOSCRIPT next time
    assert script(keys=["b"], args=token_bucket.arguments(1.0, 1, 1, 0, 0)) == [0, 1000]


def test_bucket_without_now_uses_the_redis_clock(r: redis.Redis) -> None:
    script = r.register_script(token_bucket.LUA)
    assert script(keys=["t"], args=token_bucket.arguments(1.0, 1)) == [1, 0]
    taken, wait = script(keys=["t"], args=token_bucket.arguments(1.0, 1))
    assert taken == 0 and 900 < wait <= 1000


class Breaker:
    """One breaker key driven through the script: fail_max 3, reset 1000 ms, threshold 2."""

    def __init__(self, r: redis.Redis, key: str = "breaker") -> None:
        self.script = r.register_script(breaker_state.LUA)
        self.key = key

    def __call__(self, operation: str, now: int, probe: str = "") -> BreakerReply:
        args = breaker_state.arguments(operation, probe, 3, 1000, 2, 60_000, now)
        return BreakerReply.parse(self.script(keys=[self.key], args=args))


def test_breaker_opens_after_fail_max_failures_and_a_success_resets_the_count(
    r: redis.Redis,
) -> None:
    b = Breaker(r)
    assert b("failure", 0) == BreakerReply("closed", 1, 0, "pass")
    assert b("success", 1) == BreakerReply("closed", 0, 0, "pass")
    assert b("failure", 2).failures == 1
    assert b("failure", 3).failures == 2
    assert b("failure", 10) == BreakerReply("open", 0, 1000, "pass")
    assert b("admit", 500, "p1") == BreakerReply("open", 0, 510, "reject")
    assert b("failure", 600).state == "open"  # late outcomes of closed-state calls: ignored
    assert b("success", 600).state == "open"
    assert r.pttl("breaker") > 59_000


def test_breaker_hands_out_one_trial_and_closes_after_the_threshold(r: redis.Redis) -> None:
    b = Breaker(r)
    for now in range(3):
        b("failure", now)
    assert b("admit", 1002, "p1") == BreakerReply("half-open", 0, 0, "trial")
    assert b("admit", 1003, "p2").verdict == "reject"  # one trial at a time, across processes
    assert b("success", 1004).state == "half-open"  # not the trial: ignored
    assert b("success", 1005, "p1") == BreakerReply("half-open", 0, 0, "pass")
    assert b("admit", 1006, "p3").verdict == "trial"
    assert b("success", 1007, "p3") == BreakerReply("closed", 0, 0, "pass")
    assert b("admit", 1008, "p4") == BreakerReply("closed", 0, 0, "pass")


def test_breaker_failed_trial_opens_again_and_a_lost_trial_is_superseded(r: redis.Redis) -> None:
    b = Breaker(r)
    for now in range(3):
        b("failure", now)
    assert b("admit", 1002, "p1").verdict == "trial"
    assert b("failure", 1500, "p1") == BreakerReply("open", 0, 1000, "pass")
    assert b("admit", 2499, "p2").verdict == "reject"
    assert b("admit", 2500, "p2").verdict == "trial"
    # p2 never reports back; after another reset_timeout the next call is the trial.
    assert b("admit", 3499, "p3").verdict == "reject"
    assert b("admit", 3500, "p3").verdict == "trial"
    assert b("failure", 3600, "p2").state == "half-open"  # the superseded trial: ignored
    assert b("success", 3601, "p3").state == "half-open"


def test_breakers_are_separate_keys(r: redis.Redis) -> None:
    a, other = Breaker(r, "a"), Breaker(r, "b")
    for now in range(3):
        a("failure", now)
    assert a("admit", 5, "x").verdict == "reject"
    assert other("admit", 5, "x").verdict == "pass"


def test_health_logs_once_per_transition_and_rests_for_the_retry_interval() -> None:
    now = [0.0]
    health = Health("redis://:secret@h:1/0", 1.0, clock=lambda: now[0])
    with capture_logs() as logs:
        for _ in range(3):
            health.failed(ConnectionError("refused"))
        assert not health.usable()
        now[0] = 1.0
        assert health.usable()
        health.failed(ConnectionError("refused"))
        assert not health.usable()
        for _ in range(3):
            health.succeeded()
        assert health.usable()
    assert [e["event"] for e in logs] == ["redis_unavailable", "redis_available"]
    assert logs[0]["url"] == "redis://:***@h:1/0"


@pytest.mark.parametrize(("url", "problem"), [
    ("", "is empty"),
    ("localhost:6379", "scheme"),
    ("http://h:6379", "scheme"),
    ("redis://h:port/0", "not a URL"),
    ("redis:///0", "no host"),
])
def test_url_problems(url: str, problem: str) -> None:
    assert problem in (url_problem(url) or "")


def test_good_urls_and_redaction() -> None:
    for url in ("redis://127.0.0.1:6379/0", "rediss://u:p@h:6380", "unix:///tmp/r.sock"):
        assert url_problem(url) is None
    assert redacted("redis://u:p@h:1/0") == "redis://u:***@h:1/0"
    assert redacted("redis://h:1/0") == "redis://h:1/0"
