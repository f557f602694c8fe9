"""The adaptive limiter against a fake limit algorithm and a fake clock: atomic admission,
the partition rule, exactly-once release and the samples fed to the algorithm."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from structlog.testing import capture_logs

from resilience.limits.limiter import Limiter, Token

GET = "cache.CacheService/Get"
DUMP = "cache.CacheService/Dump"


class FakeLimit:
    """A limit that records its samples and answers with ``next_limit`` (or keeps its own)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self.samples: list[tuple[float, float, int, bool]] = []
        self.next_limit: int | None = None

    @property
    def limit(self) -> int:
        return self._limit

    def on_sample(self, start: float, rtt: float, inflight: int, dropped: bool) -> int:
        self.samples.append((start, rtt, inflight, dropped))
        if self.next_limit is not None:
            self._limit = self.next_limit
        return self._limit


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def take(limiter: Limiter, partition: str | None, n: int) -> list[Token]:
    tokens = []
    for _ in range(n):
        token = limiter.try_acquire(partition)
        if token is None:
            break
        tokens.append(token)
    return tokens


def test_admits_up_to_the_limit_then_rejects() -> None:
    limiter = Limiter(FakeLimit(3))
    tokens = take(limiter, None, 10)
    assert len(tokens) == 3
    assert limiter.inflight == 3
    assert limiter.try_acquire(None) is None
    tokens[0].success()
    assert limiter.inflight == 2
    assert limiter.try_acquire(None) is not None


def test_samples_carry_start_rtt_inflight_and_dropped() -> None:
    fake, clock = FakeLimit(10), FakeClock()
    limiter = Limiter(fake, clock=clock)
    first = limiter.try_acquire(None)
    clock.now = 101.0
    second = limiter.try_acquire(None)
    third = limiter.try_acquire(None)
    assert first and second and third
    clock.now = 101.5
    first.success()
    clock.now = 103.0
    second.dropped()
    third.ignore()  # frees the slot, feeds nothing
    assert fake.samples == [(100.0, 1.5, 1, False), (101.0, 2.0, 2, True)]
    assert limiter.inflight == 0


def test_a_token_releases_exactly_once_whatever_settles_it() -> None:
    fake = FakeLimit(2)
    limiter = Limiter(fake)
    token = limiter.try_acquire(None)
    other = limiter.try_acquire(None)
    assert token and other
    token.success()
    token.dropped()
    token.ignore()
    token.success()
    assert limiter.inflight == 1
    assert len(fake.samples) == 1
    other.ignore()
    other.success()
    assert limiter.inflight == 0
    assert fake.samples == [fake.samples[0]]


def test_the_new_limit_from_a_sample_governs_admission() -> None:
    fake = FakeLimit(4)
    limiter = Limiter(fake)
    tokens = take(limiter, None, 4)
    fake.next_limit = 2
    tokens.pop().dropped()
    assert limiter.limit == 2
    assert limiter.try_acquire(None) is None  # 3 in flight, limit 2
    tokens.pop().success()
    tokens.pop().success()
    assert limiter.inflight == 1
    assert limiter.try_acquire(None) is not None
    assert limiter.try_acquire(None) is None


def test_admission_is_atomic_under_threads() -> None:
    limit = 5
    limiter = Limiter(FakeLimit(limit))
    peak = 0
    held = 0
    lock = threading.Lock()
    start = threading.Barrier(16)

    def worker() -> None:
        nonlocal peak, held
        start.wait(timeout=10)
        for _ in range(300):
            token = limiter.try_acquire(None)
            if token is None:
                time.sleep(0)
                continue
            with lock:
                held += 1
                peak = max(peak, held)
            assert limiter.inflight <= limit
            time.sleep(0.0001)  # hold the slot while other threads try
            with lock:
                held -= 1
            token.success()

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert peak <= limit
    assert peak >= 2  # the threads did contend
    assert limiter.inflight == 0


def test_partition_guarantees_are_floor_of_share_times_limit() -> None:
    limiter = Limiter(FakeLimit(10), partitions={GET: 0.7, DUMP: 0.3})
    assert (limiter.guaranteed(GET), limiter.guaranteed(DUMP)) == (7, 3)
    fake = FakeLimit(3)
    small = Limiter(fake, partitions={GET: 0.7, DUMP: 0.3})
    assert (small.guaranteed(GET), small.guaranteed(DUMP)) == (2, 0)
    fake.next_limit = 20
    token = small.try_acquire(GET)
    assert token
    token.success()
    assert (small.guaranteed(GET), small.guaranteed(DUMP)) == (14, 6)


def test_dump_borrows_idle_capacity_but_get_keeps_its_guarantee() -> None:
    limiter = Limiter(FakeLimit(10), partitions={GET: 0.7, DUMP: 0.3})
    # Get idle: a Dump flood borrows the whole limit, and no more.
    dumps = take(limiter, DUMP, 20)
    assert len(dumps) == 10
    # Get still gets its 7, over the limit, since those slots were borrowed.
    gets = take(limiter, GET, 20)
    assert len(gets) == 7
    assert limiter.inflight == 17
    assert limiter.try_acquire(DUMP) is None
    # As Dumps end, none is admitted until the total is under the limit again: with Get
    # holding 7, Dump is back to at most 3.
    for token in dumps[:7]:
        token.success()
    assert limiter.partition_inflight(DUMP) == 3
    assert limiter.try_acquire(DUMP) is None
    for token in dumps[7:]:
        token.success()
    assert len(take(limiter, DUMP, 20)) == 3
    assert limiter.inflight == 10
    assert limiter.partition_inflight(GET) == 7


def test_get_beyond_its_share_borrows_too_and_dump_keeps_its_own() -> None:
    limiter = Limiter(FakeLimit(10), partitions={GET: 0.7, DUMP: 0.3})
    assert len(take(limiter, GET, 20)) == 10
    assert len(take(limiter, DUMP, 20)) == 3
    assert limiter.inflight == 13


def test_calls_in_no_partition_only_borrow() -> None:
    limiter = Limiter(FakeLimit(10), partitions={GET: 0.5})
    assert len(take(limiter, "cache.CacheService/Store", 20)) == 10
    assert limiter.partition_inflight("cache.CacheService/Store") == 0
    assert len(take(limiter, None, 5)) == 0
    assert len(take(limiter, GET, 20)) == 5


def test_partition_inflight_goes_back_to_zero() -> None:
    limiter = Limiter(FakeLimit(4), partitions={GET: 0.5, DUMP: 0.5})
    tokens = take(limiter, GET, 3) + take(limiter, DUMP, 3)
    assert limiter.partition_inflight(GET) == 3
    assert limiter.partition_inflight(DUMP) == 2
    for token in tokens:
        token.dropped()
        token.success()
    assert limiter.inflight == 0
    assert limiter.partition_inflight(GET) == limiter.partition_inflight(DUMP) == 0


@pytest.mark.parametrize("partitions", [{GET: 0.0}, {GET: 1.5}, {GET: 0.7, DUMP: 0.4}])
def test_bad_partitions_are_refused(partitions: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="share"):
        Limiter(FakeLimit(10), partitions=partitions)


def test_limit_changes_are_logged_at_most_once_a_second() -> None:
    fake, clock = FakeLimit(10), FakeClock()
    limiter = Limiter(fake, clock=clock, name="all methods of this server")

    def sample(new: int) -> None:
        fake.next_limit = new
        token = limiter.try_acquire(None)
        assert token
        token.success()

    with capture_logs() as logs:
        sample(10)  # no change: nothing logged
        sample(12)
        clock.now += 0.5
        sample(14)  # inside the quiet second
        clock.now += 0.6
        sample(14)  # the quiet second is over: the change is reported now
        clock.now += 2
        sample(14)
    events: list[dict[str, Any]] = [e for e in logs if e["event"] == "adaptive_limit"]
    assert [(e["old"], e["new"]) for e in events] == [(10, 12), (12, 14)]
    assert events[0]["log_level"] == "info"
    assert events[0]["inflight"] == 0
    assert events[0]["limiter"] == "all methods of this server"
