"""A token bucket, and a bounded set of them keyed by a value (a tenant, say).

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second; each call
takes one. Over any window of ``t`` seconds at most ``rate * t + burst`` calls are admitted,
so ``burst`` absorbs short spikes while ``rate`` bounds the long run. Time comes from the
``clock`` passed in, so tests can drive exact sequences; these objects take no locks
(their owner holds one around each use, see ``resilience.middleware.ratelimit``).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

Clock = Callable[[], float]


class TokenBucket:
    """``burst`` tokens at most, ``rate`` more per second; starts full.

    The level may go below zero through ``reserve``: a caller that is prepared to wait
    books its token now, so callers that wait are served in order and none of them has
    to poll.
    """

    __slots__ = ("burst", "clock", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, clock: Clock = time.monotonic) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        self.rate = float(rate)
        self.burst = float(burst)
        self.clock = clock
        self.tokens = self.burst
        self.stamp = clock()

    def _refill(self) -> None:
        now = self.clock()
        if now > self.stamp:
            tokens = self.tokens + (now - self.stamp) * self.rate
            self.tokens = tokens if tokens < self.burst else self.burst
            self.stamp = now

    def _check(self, n: float) -> None:
        if not 0 < n <= self.burst:
            raise ValueError(f"n must be in (0, burst={self.burst:g}], got {n!r}")

    def try_take(self, n: float = 1) -> bool:
        """Take ``n`` tokens if they are there now; say whether they were."""
        if n != 1:
            self._check(n)
        # _refill() inlined: this is every admitted call's path.
        now = self.clock()
        if now > self.stamp:
            tokens = self.tokens + (now - self.stamp) * self.rate
            self.tokens = tokens if tokens < self.burst else self.burst
            self.stamp = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    def wait_time(self, n: float = 1) -> float:
        """Seconds until ``n`` tokens are there (0.0 if they are now); takes nothing."""
        if n != 1:
            self._check(n)
        self._refill()
        missing = n - self.tokens
        return missing / self.rate if missing > 0 else 0.0

    def reserve(self, n: float = 1, max_wait: float = math.inf) -> float | None:
        """Book ``n`` tokens and return the seconds to wait before using them (0.0 if they
        are there now), or take nothing and return ``None`` if that wait exceeds
        ``max_wait``."""
        wait = self.wait_time(n)
        if wait > max_wait:
            return None
        self.tokens -= n
        return wait


class KeyedBuckets:
    """One ``TokenBucket`` per key, for at most ``max_keys`` keys, least recently used
    evicted first; ``None`` (calls without a key) has one bucket of its own, never evicted.

    An evicted key that comes back starts with a full bucket, so ``max_keys`` should exceed
    the number of keys active within ``burst / rate`` seconds.
    """

    __slots__ = ("anonymous", "buckets", "burst", "clock", "max_keys", "rate")

    def __init__(
        self, rate: float, burst: int, max_keys: int, clock: Clock = time.monotonic
    ) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys!r}")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        self.anonymous = TokenBucket(rate, burst, clock)
        self.buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    def get(self, key: Hashable | None) -> TokenBucket:
        """The bucket of ``key``, made full if it is new, evicting the least recently used
        key if there are then more than ``max_keys``."""
        if key is None:
            return self.anonymous
        buckets = self.buckets
        bucket = buckets.get(key)
        if bucket is not None:
            buckets.move_to_end(key)
            return bucket
        bucket = buckets[key] = TokenBucket(self.rate, self.burst, self.clock)
        if len(buckets) > self.max_keys:
            buckets.popitem(last=False)
        return bucket

    def __len__(self) -> int:
        return len(self.buckets)
