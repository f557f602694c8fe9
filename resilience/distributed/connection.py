"""One Redis client per process (per event loop, for asyncio) per configuration, and a
health state that keeps a dead Redis from costing every call a timeout.

Every command has a short socket and connect timeout (``REDIS_TIMEOUT``) and no retries,
so a Redis call never holds an RPC for long. After a failure, ``Health`` says "down" for
``REDIS_RETRY_INTERVAL`` seconds: callers use their fallback without trying Redis, so a
dead Redis costs one timeout per interval, not one per call. Transitions are logged once
each (``redis_unavailable``, ``redis_available``), never per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
import weakref
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
import structlog
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from resilience.core.errors import ImproperlyConfigured
from resilience.core.middleware import ChainInfo
from resilience.core.options import mask

log = structlog.get_logger(__name__)

#: The key of ``ChainInfo.shared`` under which the transports put the active settings.
SETTINGS_KEY = "settings"
URL_SCHEMES = ("redis", "rediss", "unix")
#: What a failed Redis call can raise: connection and timeout errors, and server errors
#: (a Redis that is loading, read-only or out of memory).
REDIS_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError, asyncio.TimeoutError)


@dataclasses.dataclass(frozen=True)
class RedisConfig:
    """The ``REDIS_*`` settings a middleware needs; hashable, so one client per value."""

    url: str
    max_connections: int = 50
    timeout: float = 0.05
    key_prefix: str = "resilience"
    retry_interval: float = 1.0

    @classmethod
    def from_settings(cls, settings: Any) -> RedisConfig:
        return cls(
            url=settings.REDIS_URL,
            max_connections=settings.REDIS_MAX_CONNECTIONS,
            timeout=settings.REDIS_TIMEOUT,
            key_prefix=settings.REDIS_KEY_PREFIX,
            retry_interval=settings.REDIS_RETRY_INTERVAL,
        )


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a Redis URL, or ``None`` if it can."""
    if not url:
        return "is empty"
    shown = repr(redacted(url))  # never the password
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        return f"is {shown}, which is not a URL ({exc})"
    if parts.scheme not in URL_SCHEMES:
        return f"is {shown}, whose scheme is not redis://, rediss:// or unix://"
    if parts.scheme != "unix" and not parts.hostname:
        return f"is {shown}, which names no host"
    return None


def redacted(url: str) -> str:
    """``url`` without its password, for logs and messages: REDIS_URL is declared secret
    (GlobalSettings), so ``redact`` masks it the same way."""
    return mask(url)


def config_of(info: ChainInfo, what: str) -> RedisConfig:
    """The Redis configuration of the settings the chain was built from; raise
    ImproperlyConfigured (naming ``what`` asked for Redis) if there is none."""
    settings = info.shared.get(SETTINGS_KEY)
    if settings is None:
        raise ImproperlyConfigured(
            f"{what} has storage = 'redis' but the chain was built without settings; "
            "build it through connect()/Server, or use storage = 'local'"
        )
    config = RedisConfig.from_settings(settings)
    problem = url_problem(config.url)
    if problem is not None:
        raise ImproperlyConfigured(
            f"{what} has storage = 'redis' but REDIS_URL {problem}; set REDIS_URL to "
            "redis://HOST:PORT/DB, or use storage = 'local'"
        )
    return config


class Health:
    """Whether Redis answered lately; one per configuration per process, shared by the
    sync and asyncio clients, so a transition is logged once however many use it.

    ``usable()`` is a lock-free read on every call's path; ``failed`` and ``succeeded``
    take the lock only when the state changes.
    """

    __slots__ = ("_lock", "available", "clock", "down_until", "failures", "retry_interval",
                 "url")

    def __init__(self, url: str, retry_interval: float, clock: Any = time.monotonic) -> None:
        self.url = redacted(url)
        self.retry_interval = retry_interval
        self.clock = clock
        self.available = True
        self.down_until = 0.0
        self.failures = 0
        self._lock = threading.Lock()

    def usable(self) -> bool:
        """Whether to try Redis now: it is up, or its retry interval has passed."""
        return self.available or self.clock() >= self.down_until

    def failed(self, error: BaseException) -> None:
        """A Redis call failed: use the fallback for ``retry_interval`` seconds."""
        with self._lock:
            self.failures += 1
            self.down_until = self.clock() + self.retry_interval
            if self.available:
                self.available = False
                log.warning("redis_unavailable", url=self.url, error=repr(error),
                            retry_in_s=self.retry_interval)

    def succeeded(self) -> None:
        """A Redis call answered; log the recovery if Redis was down."""
        if self.available:
            return
        with self._lock:
            if not self.available:
                self.available = True
                log.info("redis_available", url=self.url)


_lock = threading.Lock()
_health: dict[RedisConfig, Health] = {}
_clients: dict[RedisConfig, redis.Redis] = {}
_scripts: dict[tuple[RedisConfig, str], Any] = {}
_seen: dict[RedisConfig, int] = {}
_aseen: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[RedisConfig, int]] = (
    weakref.WeakKeyDictionary()
)
_ascripts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, Any]] = (
    weakref.WeakKeyDictionary()
)
_aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[RedisConfig, Any]] = (
    weakref.WeakKeyDictionary()
)


def _options(config: RedisConfig, retry: Any) -> dict[str, Any]:
    return {
        "retry": retry,
        "max_connections": config.max_connections,
        # A full pool waits this long for a free connection, then the call fails over.
        "timeout": config.timeout,
        "socket_timeout": config.timeout,
        "socket_connect_timeout": config.timeout,
    }


def health(config: RedisConfig) -> Health:
    """This process's health state for ``config``."""
    found = _health.get(config)
    if found is None:
        with _lock:
            found = _health.setdefault(config, Health(config.url, config.retry_interval))
    return found


def client(config: RedisConfig) -> redis.Redis:
    """This process's sync client for ``config``: one pool, no retries, short timeouts."""
    found = _clients.get(config)
    if found is None:
        with _lock:
            found = _clients.get(config)
            if found is None:
                retry = Retry(NoBackoff(), 0)
                pool = redis.BlockingConnectionPool.from_url(config.url, **_options(config, retry))
                found = _clients[config] = redis.Redis(connection_pool=pool, retry=retry)
    return found


def async_client(config: RedisConfig) -> redis.asyncio.Redis:
    """The running event loop's asyncio client for ``config`` (asyncio connections belong
    to one loop); made on first use in that loop."""
    loop = asyncio.get_running_loop()
    clients = _aclients.get(loop)
    if clients is None:
        clients = _aclients.setdefault(loop, {})
    found = clients.get(config)
    if found is None:
        retry = AsyncRetry(NoBackoff(), 0)
        pool = redis.asyncio.BlockingConnectionPool.from_url(config.url, **_options(config, retry))
        found = clients[config] = redis.asyncio.Redis(connection_pool=pool, retry=retry)
    return found


def failed(config: RedisConfig, error: BaseException) -> None:
    """A Redis call failed: rest for the retry interval (``Health.failed``)."""
    health(config).failed(error)


def ready(config: RedisConfig) -> None:
    """Before a sync Redis call: if a call failed since the last look, drop the pool's idle
    connections, which a restarted Redis no longer knows (each would fail once more, and
    cost one more retry interval). One comparison when nothing failed."""
    failures = health(config).failures
    if _seen.get(config, 0) != failures:
        _seen[config] = failures
        client(config).connection_pool.disconnect(inuse_connections=False)


async def aready(config: RedisConfig) -> None:
    """``ready`` for the running event loop's asyncio client."""
    failures = health(config).failures
    seen = _aseen.setdefault(asyncio.get_running_loop(), {})
    if seen.get(config, 0) != failures:
        seen[config] = failures
        with contextlib.suppress(*REDIS_ERRORS):
            await async_client(config).connection_pool.disconnect(inuse_connections=False)


def script(config: RedisConfig, lua: str) -> Any:
    """A callable running ``lua`` on this process's sync client (EVALSHA; on NOSCRIPT,
    after a Redis restart, redis-py loads the script again and retries once)."""
    key = (config, lua)
    found = _scripts.get(key)
    if found is None:
        with _lock:
            found = _scripts.get(key)
        if found is None:
            found = _scripts.setdefault(key, client(config).register_script(lua))
    return found


def async_script(config: RedisConfig, lua: str) -> Any:
    """``script`` for the running event loop's asyncio client; await its result."""
    loop = asyncio.get_running_loop()
    scripts = _ascripts.get(loop)
    if scripts is None:
        scripts = _ascripts.setdefault(loop, {})
    found = scripts.get((config, lua))
    if found is None:
        found = scripts[(config, lua)] = async_client(config).register_script(lua)
    return found


def reset() -> None:
    """Forget every client and health state (tests; a forked child)."""
    with _lock:
        for found in _clients.values():
            found.close()
        _clients.clear()
        _scripts.clear()
        _seen.clear()
        _aseen.clear()
        _health.clear()
        _aclients.clear()
        _ascripts.clear()
