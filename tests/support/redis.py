"""A real redis-server per test, on an ephemeral loopback port (``LocalRedis``), that a
test can kill and restart on the same port; and the settings that point at it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from resilience.distributed import connection
from resilience.distributed.local_redis import LocalRedis


def redis_available() -> bool:
    return bool(shutil.which("redis-server") or os.path.exists("/usr/bin/redis-server"))


@pytest.fixture
def redis_server() -> Iterator[LocalRedis]:
    """A started redis-server, killed after the test; this process's Redis clients and
    health states are forgotten after it too."""
    if not redis_available():
        pytest.skip("redis-server is not installed (scripts/test installs it)")
    server = LocalRedis().start()
    try:
        yield server
    finally:
        server.kill()
        connection.reset()


def redis_settings(server: LocalRedis, prefix: str = "test", **values: Any) -> dict[str, Any]:
    """Setting values that point at ``server``, with short timeouts and retry interval."""
    return {"REDIS_URL": server.url, "REDIS_KEY_PREFIX": prefix, "REDIS_TIMEOUT": 0.2,
            "REDIS_RETRY_INTERVAL": 0.2, **values}
