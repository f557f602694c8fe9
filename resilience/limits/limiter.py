"""Admission against an adaptive concurrency limit, in the manner of Netflix
concurrency-limits' ``SimpleLimiter`` and ``AbstractPartitionedLimiter``.

A :class:`Limiter` admits a call while fewer than ``limit`` calls are in flight and hands
back a :class:`Token`; the token frees the slot exactly once and feeds the call's outcome
(start, round-trip time, calls in flight when it started, dropped or not) to the limit
algorithm, which answers with the new limit. Admission never waits.

Partitions (``{"cache.CacheService/Get": 0.7, "cache.CacheService/Dump": 0.3}``) reserve
capacity for some callers. The exact rule, checked as one step under the lock:

* a partition's guaranteed slots are ``floor(share * limit)`` (recomputed as the limit
  moves; a tiny limit may leave a partition none);
* a call in a partition with fewer calls in flight than its guaranteed slots is always
  admitted, even if that takes the total over the limit;
* any other call (over its partition's guarantee, or in no partition) is admitted only
  while the total in flight is under the limit: it borrows idle capacity.

So with Get 0.7 / Dump 0.3 and a limit of 10, a Dump flood may borrow all 10 slots while
Get is idle, but Get is still admitted up to 7 at once, and while Get holds its 7 a Dump
is admitted only while the total is under 10, that is at most 3 Dumps. Borrowed slots are
never taken back from running calls, so the total may exceed the limit by what was
borrowed when the owners came back: at most ``limit`` over it. Without partitions the
total never exceeds the limit.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping

import structlog

from resilience.limits.base import Limit

log = structlog.get_logger(__name__)

#: Seconds between two "adaptive_limit" log lines of one limiter; changes in between are
#: reported together by the next line.
LOG_INTERVAL = 1.0


class Token:
    """One admitted call's slot. Exactly one of ``success``, ``dropped`` or ``ignore``
    takes effect (the first, from any thread); later calls do nothing, so every path that
    can end a call may settle it."""

    __slots__ = ("_done", "_limiter", "inflight", "partition", "start")

    def __init__(self, limiter: Limiter, partition: str | None, start: float, inflight: int
                 ) -> None:
        self._limiter = limiter
        self._done = False
        self.partition = partition
        self.start = start
        #: Calls in flight when this one was admitted, itself included.
        self.inflight = inflight

    def success(self) -> None:
        """The call ended normally (any answer, errors included): a full sample."""
        self._limiter._settle(self, sample=True, dropped=False)

    def dropped(self) -> None:
        """The call timed out, was rejected downstream or cancelled: a sign of overload."""
        self._limiter._settle(self, sample=True, dropped=True)

    def ignore(self) -> None:
        """Free the slot without a sample: the outcome says nothing about load."""
        self._limiter._settle(self, sample=False, dropped=False)


class Limiter:
    """Admit calls against ``limit.limit``, optionally with guaranteed partition shares
    (see the module doc for the exact rule), and feed outcomes back to ``limit``."""

    def __init__(
        self,
        limit: Limit,
        *,
        partitions: Mapping[str, float] | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "",
    ) -> None:
        shares = dict(partitions or {})
        for partition, share in shares.items():
            if not 0 < share <= 1:
                raise ValueError(
                    f"partition {partition!r} has share {share}; expected 0 < share <= 1"
                )
        if sum(shares.values()) > 1 + 1e-9:
            raise ValueError(f"partition shares sum to {sum(shares.values())}; expected <= 1")
        self._algorithm = limit
        self._clock = clock
        self._name = name
        self._lock = threading.Lock()
        self._limit = limit.limit
        self._inflight = 0
        self._shares = shares
        self._partition_inflight = dict.fromkeys(shares, 0)
        self._guaranteed = self._guarantees(self._limit)
        self._logged_limit = self._limit
        self._logged_at = -math.inf

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def inflight(self) -> int:
        return self._inflight

    def partition_inflight(self, partition: str) -> int:
        """Calls in flight in ``partition`` (0 for a name that is no partition)."""
        return self._partition_inflight.get(partition, 0)

    def guaranteed(self, partition: str) -> int:
        """Slots ``partition`` is guaranteed at the current limit."""
        return self._guaranteed.get(partition, 0)

    def try_acquire(self, partition: str | None = None) -> Token | None:
        """A token for one call, or ``None`` if the limit (or the partition rule) says no."""
        lock = self._lock
        lock.acquire()
        inflight = self._inflight
        busy = self._partition_inflight.get(partition) if partition is not None else None
        if busy is None:
            if inflight >= self._limit:
                lock.release()
                return None
            partition = None  # in no partition: it only ever borrows
        else:
            if inflight >= self._limit and busy >= self._guaranteed[partition]:
                lock.release()
                return None
            self._partition_inflight[partition] = busy + 1
        inflight += 1
        self._inflight = inflight
        lock.release()
        return Token(self, partition, self._clock(), inflight)

    def _guarantees(self, limit: int) -> dict[str, int]:
        # The epsilon keeps 0.3 * 10 (2.9999999999999996 in floats) at 3.
        return {p: math.floor(share * limit + 1e-9) for p, share in self._shares.items()}

    def _settle(self, token: Token, *, sample: bool, dropped: bool) -> None:
        now = self._clock()
        with self._lock:
            if token._done:
                return
            token._done = True
            self._inflight -= 1
            if token.partition is not None:
                self._partition_inflight[token.partition] -= 1
            if not sample:
                return
            new = self._algorithm.on_sample(token.start, now - token.start, token.inflight,
                                            dropped)
            if new != self._limit:
                self._limit = new
                if self._shares:
                    self._guaranteed = self._guarantees(new)
            # Checked on every sample, so a change made inside the quiet interval is still
            # reported once the interval is over.
            if new == self._logged_limit or now - self._logged_at < LOG_INTERVAL:
                return
            old, self._logged_limit, self._logged_at = self._logged_limit, new, now
            inflight = self._inflight
        log.info("adaptive_limit", limiter=self._name, old=old, new=new, inflight=inflight)
