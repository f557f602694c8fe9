"""Fallback functions for the cache client: when the cache cannot answer a Get, answer with
the last value this process saw for that key, never with a made-up one.

For ``resilience.middleware.Fallback``: ``observe`` records what successful calls showed
(a Get's value, a Store's written value), ``last_value`` serves it. A key never seen, or
any other method, gets the original error back. The seed's flaw was a silent ``[0]``.

```toml
[default]
CLIENT_MIDDLEWARE = [
    "resilience.middleware.Fallback",
    "resilience.middleware.Retry",
    "resilience.middleware.Timeout",
    "resilience.middleware.CircuitBreaker",
]

[default.CLIENT_OPTIONS.Fallback]
function = "apps.cache.fallbacks.last_value"
observe = "apps.cache.fallbacks.observe"
```

The values live in one bounded LRU map per process (``last_values``), shared by every
channel, safe to use from threads and from an event loop (its lock is held only for a
dict update). A served value may be stale: another client may have changed the key since.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from apps.cache.protos import cache_pb2

MAX_KEYS = 10_000
MAX_BYTES = 64 * 1024 * 1024


class LastValues:
    """The last value seen per key, least recently used dropped first, bounded by both the
    number of keys and the bytes of values held."""

    def __init__(self, max_keys: int = MAX_KEYS, max_bytes: int = MAX_BYTES) -> None:
        self.max_keys = max_keys
        self.max_bytes = max_bytes
        self.bytes = 0
        self._values: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: str, value: bytes) -> None:
        """Remember ``value`` for ``key``. A value over ``max_bytes`` is not kept, and then
        the older value is forgotten too, since it is no longer the last one seen."""
        with self._lock:
            old = self._values.pop(key, None)
            if old is not None:
                self.bytes -= len(old)
            if len(value) > self.max_bytes:
                return
            self._values[key] = value
            self.bytes += len(value)
            while len(self._values) > self.max_keys or self.bytes > self.max_bytes:
                _, dropped = self._values.popitem(last=False)
                self.bytes -= len(dropped)

    def get(self, key: str) -> bytes | None:
        """The last value seen for ``key``, or None; marks it recently used."""
        with self._lock:
            value = self._values.get(key)
            if value is not None:
                self._values.move_to_end(key)
            return value

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self.bytes = 0

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: object) -> bool:
        return key in self._values


#: The process's map, read by ``last_value`` and filled by ``observe``.
last_values = LastValues()


def observe(request: Any, response: Any) -> None:
    """Record the value a successful Get returned, or a successful Store wrote."""
    if isinstance(request, cache_pb2.GetReq):
        last_values.put(request.key, response.value)
    elif isinstance(request, cache_pb2.StoreReq):
        last_values.put(request.key, request.value)


def last_value(request: Any, error: BaseException) -> cache_pb2.GetResp:
    """The last value seen for a Get's key; otherwise ``error`` again, unchanged."""
    if isinstance(request, cache_pb2.GetReq):
        value = last_values.get(request.key)
        if value is not None:
            return cache_pb2.GetResp(value=value)
    raise error
