"""TokenBucket and KeyedBuckets against exact sequences on a fake clock, then the RateLimit
middleware over fake handlers (sync and asyncio), with no network.

Rates and times are chosen so that every figure is exact in binary floating point.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from resilience.core.call import Call, CallKind
from resilience.core.errors import RpcStatusError
from resilience.core.middleware import ChainInfo
from resilience.core.options import build_options
from resilience.limits import KeyedBuckets, TokenBucket
from resilience.middleware import RateLimit

METHOD = "cache.CacheService/Get"
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- TokenBucket ---------------------------------------------------------------------------


def test_starts_full_and_admits_exactly_the_burst() -> None:
    bucket = TokenBucket(rate=4, burst=3, clock=FakeClock())
    assert [bucket.try_take() for _ in range(5)] == [True, True, True, False, False]


def test_refills_at_the_rate_in_exact_steps() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=4, burst=2, clock=clock)
    assert bucket.try_take() and bucket.try_take()
    assert not bucket.try_take()
    clock.advance(0.125)  # half a token
    assert not bucket.try_take()
    assert bucket.tokens == 0.5
    clock.advance(0.125)  # one token
    assert bucket.try_take()
    assert not bucket.try_take()
    clock.advance(0.25)
    assert bucket.try_take()
    assert bucket.tokens == 0.0


def test_refill_is_capped_at_the_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=4, burst=2, clock=clock)
    bucket.try_take()
    clock.advance(3600)
    assert bucket.tokens == 1  # not refilled until used
    assert [bucket.try_take() for _ in range(3)] == [True, True, False]


def test_a_failed_take_takes_nothing() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2, burst=1, clock=clock)
    assert bucket.try_take()
    for _ in range(10):
        assert not bucket.try_take()
    clock.advance(0.5)
    assert bucket.try_take()


def test_over_a_window_admits_rate_times_t_plus_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=8, burst=4, clock=clock)
    admitted = 0
    for _ in range(801):  # every 1/64 s from 0 to 12.5 s, far above the rate
        admitted += bucket.try_take()
        clock.advance(1 / 64)
    assert admitted == 8 * 12.5 + 4


def test_wait_time_says_when_the_next_token_is_there() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=4, burst=2, clock=clock)
    assert bucket.wait_time() == 0.0
    bucket.try_take()
    bucket.try_take()
    assert bucket.wait_time() == 0.25
    clock.advance(0.125)
    assert bucket.wait_time() == 0.125
    assert bucket.wait_time(2) == 0.375
    clock.advance(0.125)
    assert bucket.wait_time() == 0.0
    assert bucket.tokens == 1  # wait_time takes nothing


def test_n_tokens_at_once() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2, burst=4, clock=clock)
    assert bucket.try_take(3)
    assert not bucket.try_take(2)
    clock.advance(0.5)
    assert bucket.try_take(2)
    assert bucket.tokens == 0


@pytest.mark.parametrize("n", [0, -1, 5])
def test_n_outside_zero_to_burst_is_an_error(n: float) -> None:
    bucket = TokenBucket(rate=2, burst=4, clock=FakeClock())
    with pytest.raises(ValueError, match="burst=4"):
        bucket.try_take(n)
    with pytest.raises(ValueError, match="burst=4"):
        bucket.wait_time(n)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_bad_rate_or_burst(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match=r"rate|burst"):
        TokenBucket(rate, burst, FakeClock())


def test_reserve_books_tokens_in_order_and_respects_max_wait() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=4, burst=1, clock=clock)
    assert bucket.reserve() == 0.0
    assert bucket.reserve() == 0.25
    assert bucket.reserve() == 0.5  # queued behind the previous booking
    assert bucket.reserve(max_wait=0.5) is None  # 0.75 s away: nothing taken
    assert bucket.tokens == -2
    assert bucket.wait_time() == 0.75
    clock.advance(0.75)
    assert bucket.try_take()


def test_a_clock_that_goes_back_never_adds_tokens() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=4, burst=1, clock=clock)
    bucket.try_take()
    clock.advance(-10)
    assert not bucket.try_take()
    clock.advance(10.25)
    assert bucket.try_take()


# --- KeyedBuckets --------------------------------------------------------------------------


def test_each_key_gets_its_own_full_bucket() -> None:
    clock = FakeClock()
    keyed = KeyedBuckets(rate=1, burst=2, max_keys=10, clock=clock)
    for key in ("a", "b"):
        assert [keyed.get(key).try_take() for _ in range(3)] == [True, True, False]
    assert keyed.get("a") is keyed.get("a")
    assert len(keyed) == 2


def test_calls_without_a_key_share_one_anonymous_bucket_that_is_never_evicted() -> None:
    keyed = KeyedBuckets(rate=1, burst=1, max_keys=1, clock=FakeClock())
    anonymous = keyed.get(None)
    assert anonymous.try_take()
    for key in "abc":
        keyed.get(key)
    assert keyed.get(None) is anonymous
    assert not keyed.get(None).try_take()
    assert len(keyed) == 1


def test_least_recently_used_key_is_evicted_beyond_max_keys() -> None:
    keyed = KeyedBuckets(rate=1, burst=1, max_keys=2, clock=FakeClock())
    assert keyed.get("a").try_take()
    assert keyed.get("b").try_take()
    keyed.get("a")  # a is now more recent than b
    assert keyed.get("c").try_take()  # evicts b
    assert len(keyed) == 2
    assert list(keyed.buckets) == ["a", "c"]
    assert not keyed.get("a").try_take()  # a kept its empty bucket
    assert keyed.get("b").try_take()  # b comes back full and evicts c, now least recent
    assert list(keyed.buckets) == ["a", "b"]


def test_max_keys_bounds_the_dict_under_many_keys() -> None:
    keyed = KeyedBuckets(rate=1, burst=1, max_keys=100, clock=FakeClock())
    for n in range(10_000):
        keyed.get(f"tenant-{n}").try_take()
    assert len(keyed) == 100
    assert next(iter(keyed.buckets)) == "tenant-9900"


# --- the RateLimit middleware, no network --------------------------------------------------


def limiter(clock: FakeClock, *, side: str = "server", kind: CallKind = CallKind.UNARY_UNARY,
            is_async: bool = False, shared: dict[str, Any] | None = None,
            method: str = METHOD, handler: Any = None, **values: Any) -> RateLimit:
    class Timed(RateLimit):
        pass

    Timed.clock = staticmethod(clock)  # type: ignore[assignment]
    options, problems = build_options(RateLimit.Options, values)
    assert not problems, problems
    info = ChainInfo(method, kind, side, "RateLimit", {} if shared is None else shared,  # type: ignore[arg-type]
                     "127.0.0.1:1", is_async)
    return Timed(handler or (lambda call: "ok"), options, info)  # type: ignore[arg-type]


def call_of(metadata: tuple[tuple[str, str], ...] = (), deadline: float | None = None,
            side: str = "server", kind: CallKind = CallKind.UNARY_UNARY) -> Call:
    return Call(METHOD, kind, side, "req", metadata=metadata, deadline=deadline)  # type: ignore[arg-type]


def outcomes(mw: RateLimit, n: int, call: Call) -> list[str]:
    results = []
    for _ in range(n):
        try:
            results.append(mw(call))
        except RpcStatusError as exc:
            results.append(exc.code().name)
    return results


def test_server_rejection_names_the_limit_and_carries_pushback() -> None:
    clock = FakeClock()
    mw = limiter(clock, rate=4.0, burst=2)
    assert outcomes(mw, 2, call_of()) == ["ok", "ok"]
    clock.advance(0.125)
    with pytest.raises(RpcStatusError) as rejected:
        mw(call_of())
    exc = rejected.value
    assert exc.code() == EXHAUSTED
    assert "rate limit exceeded: 4 calls/s with bursts of 2" in exc.details()
    assert "all methods of this server (127.0.0.1:1)" in exc.details()
    assert "125 ms" in exc.details()
    assert exc.trailing_metadata() == (("grpc-retry-pushback-ms", "125"),)
    clock.advance(0.125)
    assert mw(call_of()) == "ok"


def test_pushback_rounds_up_to_a_whole_positive_millisecond() -> None:
    clock = FakeClock()
    mw = limiter(clock, rate=1000.0, burst=1)
    mw(call_of())
    clock.advance(0.9999e-3)
    with pytest.raises(RpcStatusError) as rejected:
        mw(call_of())
    assert rejected.value.trailing_metadata() == (("grpc-retry-pushback-ms", "1"),)


def test_key_server_shares_one_bucket_between_methods_and_key_method_does_not() -> None:
    clock = FakeClock()
    shared: dict[str, Any] = {}
    get = limiter(clock, shared=shared, rate=1.0, burst=1)
    store = limiter(clock, shared=shared, method="cache.CacheService/Store", rate=1.0, burst=1)
    assert get.bucket is store.bucket
    assert outcomes(get, 1, call_of()) + outcomes(store, 1, call_of()) == ["ok", EXHAUSTED.name]

    get = limiter(clock, shared=shared, key="method", rate=1.0, burst=1)
    store = limiter(clock, shared=shared, key="method", rate=1.0, burst=1,
                    method="cache.CacheService/Store")
    assert get.bucket is not store.bucket
    assert outcomes(get, 1, call_of()) + outcomes(store, 1, call_of()) == ["ok", "ok"]


def test_per_metadata_key_buckets_with_an_anonymous_one() -> None:
    clock = FakeClock()
    mw = limiter(clock, key="metadata", metadata_key="x-tenant", rate=1.0, burst=2, max_keys=2)
    a, b = call_of((("x-tenant", "a"),)), call_of((("other", "x"), ("x-tenant", "b")))
    assert outcomes(mw, 3, a) == ["ok", "ok", EXHAUSTED.name]
    assert outcomes(mw, 3, b) == ["ok", "ok", EXHAUSTED.name]
    assert outcomes(mw, 3, call_of()) == ["ok", "ok", EXHAUSTED.name]
    with pytest.raises(RpcStatusError) as anonymous:
        mw(call_of())
    assert "calls without 'x-tenant' on this server" in anonymous.value.details()
    with pytest.raises(RpcStatusError) as tenant:
        mw(a)
    assert "each 'x-tenant' value on this server" in tenant.value.details()
    assert mw.keyed is not None and len(mw.keyed) == 2
    outcomes(mw, 1, call_of((("x-tenant", "c"),)))  # evicts b, the least recently used
    assert list(mw.keyed.buckets) == ["a", "c"]


def test_client_rejects_locally_and_not_retryably() -> None:
    clock = FakeClock()
    mw = limiter(clock, side="client", rate=1.0, burst=1)
    mw(call_of(side="client"))
    with pytest.raises(RpcStatusError) as rejected:
        mw(call_of(side="client"))
    assert rejected.value.retryable is False
    assert "(rejected by this client)" in rejected.value.details()
    assert "all methods of this channel" in rejected.value.details()
    assert rejected.value.trailing_metadata() == (("grpc-retry-pushback-ms", "1000"),)


def test_client_wait_sleeps_for_each_token_in_turn() -> None:
    clock = FakeClock()
    mw = limiter(clock, side="client", wait=True, rate=4.0, burst=1)
    slept: list[float] = []
    mw.sleep = slept.append  # type: ignore[assignment]
    assert outcomes(mw, 4, call_of(side="client")) == ["ok"] * 4
    assert slept == [0.25, 0.5, 0.75]  # bookings queue; nobody polls


def test_client_wait_never_passes_the_deadline() -> None:
    clock = FakeClock()
    mw = limiter(clock, side="client", wait=True, rate=4.0, burst=1)
    slept: list[float] = []
    mw.sleep = slept.append  # type: ignore[assignment]
    mw(call_of(side="client"))
    with pytest.raises(RpcStatusError) as rejected:
        mw(call_of(side="client", deadline=clock.now + 0.125))
    exc = rejected.value
    assert exc.code() == EXHAUSTED and exc.retryable is False
    assert "waiting would pass this call's deadline in 125 ms" in exc.details()
    assert exc.trailing_metadata() == (("grpc-retry-pushback-ms", "250"),)
    assert slept == []
    assert mw.bucket is not None and mw.bucket.tokens == 0  # nothing was booked
    assert mw(call_of(side="client", deadline=clock.now + 0.25)) == "ok"
    assert slept == [0.25]


def test_client_wait_with_a_past_deadline_still_passes_when_a_token_is_free() -> None:
    clock = FakeClock()
    mw = limiter(clock, side="client", wait=True, rate=4.0, burst=1)
    assert mw(call_of(side="client", deadline=clock.now - 1)) == "ok"


def test_wait_is_ignored_on_the_server() -> None:
    clock = FakeClock()
    mw = limiter(clock, wait=True, rate=4.0, burst=1)
    assert outcomes(mw, 2, call_of()) == ["ok", EXHAUSTED.name]


def test_a_stream_takes_one_token_when_it_starts() -> None:
    clock = FakeClock()
    mw = limiter(clock, kind=CallKind.UNARY_STREAM, rate=1.0, burst=1,
                 handler=lambda call: iter(range(5)))
    assert list(mw(call_of(kind=CallKind.UNARY_STREAM))) == [0, 1, 2, 3, 4]
    with pytest.raises(RpcStatusError):
        mw(call_of(kind=CallKind.UNARY_STREAM))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"key": "metadata"}, "metadata_key is empty"),
        ({"metadata_key": "x-tenant"}, "set key = 'metadata' or remove metadata_key"),
        ({"key": "metadata", "metadata_key": "X-Tenant"}, "write 'x-tenant'"),
        ({"rate": 0}, "option 'rate' is 0.0; expected a value > 0"),
        ({"burst": 0}, "option 'burst' is 0; expected a value >= 1"),
        ({"key": "tenant"}, "expected one of 'server', 'method', 'metadata'"),
    ],
)
def test_bad_options_are_explained(values: dict[str, Any], expected: str) -> None:
    options, problems = build_options(RateLimit.Options, values)
    assert options is None
    assert any(expected in p for p in problems), problems


# --- the asyncio paths ---------------------------------------------------------------------


async def answer(call: Call) -> str:
    await asyncio.sleep(0)
    return "ok"


async def items(call: Call) -> AsyncIterator[int]:
    for n in range(3):
        yield n


def test_async_unary_admits_and_rejects_like_the_sync_path() -> None:
    clock = FakeClock()
    mw = limiter(clock, is_async=True, rate=1.0, burst=1, handler=answer)

    async def run() -> None:
        assert await mw.acall(call_of()) == "ok"
        with pytest.raises(RpcStatusError) as rejected:
            await mw.acall(call_of())
        assert rejected.value.trailing_metadata() == (("grpc-retry-pushback-ms", "1000"),)

    asyncio.run(run())


def test_async_client_wait_awaits_its_token() -> None:
    clock = FakeClock()
    mw = limiter(clock, side="client", is_async=True, wait=True, rate=4.0, burst=1,
                 handler=answer)
    slept: list[float] = []

    async def asleep(seconds: float) -> None:
        slept.append(seconds)

    mw.asleep = asleep  # type: ignore[assignment]

    async def run() -> None:
        for _ in range(3):
            assert await mw.acall(call_of(side="client")) == "ok"
        with pytest.raises(RpcStatusError) as rejected:
            await mw.acall(call_of(side="client", deadline=clock.now + 0.5))
        assert rejected.value.code() == EXHAUSTED

    asyncio.run(run())
    assert slept == [0.25, 0.5]


def test_async_client_wait_for_a_stream_books_at_start_and_waits_when_read() -> None:
    clock = FakeClock()
    kind = CallKind.UNARY_STREAM
    mw = limiter(clock, side="client", kind=kind, is_async=True, wait=True, rate=4.0, burst=1,
                 handler=items)
    slept: list[float] = []

    async def asleep(seconds: float) -> None:
        slept.append(seconds)

    mw.asleep = asleep  # type: ignore[assignment]

    async def run() -> None:
        assert [n async for n in mw.acall(call_of(side="client", kind=kind))] == [0, 1, 2]
        second = mw.acall(call_of(side="client", kind=kind))
        third = mw.acall(call_of(side="client", kind=kind))
        assert slept == []
        assert [n async for n in third] == [0, 1, 2]
        assert [n async for n in second] == [0, 1, 2]
        assert slept == [0.5, 0.25]

    asyncio.run(run())


def test_async_client_wait_cancelled_while_waiting_propagates() -> None:
    mw = limiter(FakeClock(), side="client", is_async=True, wait=True, rate=1.0, burst=1,
                 handler=answer)
    sent: list[Call] = []

    async def handler(call: Call) -> str:
        sent.append(call)
        return "ok"

    mw.handler = handler

    async def run() -> None:
        await mw.acall(call_of(side="client"))
        task = asyncio.ensure_future(mw.acall(call_of(side="client")))  # waits ~1 s for real
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert len(sent) == 1
    assert mw.bucket is not None and mw.bucket.tokens == -1  # the booking is not given back
