"""The cache's storage: a dict behind one lock, shared by every server thread."""

from __future__ import annotations

import threading


class MemoryStore:
    """A thread-safe in-memory map from keys to byte values.

    ``items`` returns a snapshot, so a caller streaming it never holds the lock while it waits
    on the network.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._data.get(key)

    def put(self, key: str, value: bytes) -> None:
        with self._lock:
            self._data[key] = value

    def items(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self._data.items())

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)
