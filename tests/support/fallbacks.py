"""Fallbacks for CircuitBreaker's ``fallback`` option, recording what they were given."""

from __future__ import annotations

import threading
from typing import Any

from apps.cache.protos import cache_pb2

#: (request, error) for every call of ``fallback_value``, oldest first; tests clear it.
received: list[tuple[Any, BaseException]] = []
_lock = threading.Lock()


def fallback_value(request: Any, error: BaseException) -> cache_pb2.GetResp:
    """Answer every Get with ``b"fallback"`` and remember the error that caused it."""
    with _lock:
        received.append((request, error))
    return cache_pb2.GetResp(value=b"fallback")
