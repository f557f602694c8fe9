"""Every framework setting, its type, its default and what it is for: the one home of them.

A project's ``settings/settings.toml`` overrides these per environment. Apps may add their
own settings, named with the app's label as prefix (``CACHE_MAX_VALUE_BYTES``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from resilience.core.middleware import option

DEFAULT_CLIENT_MIDDLEWARE = (
    "resilience.middleware.Retry",
    "resilience.middleware.Timeout",
    "resilience.middleware.CircuitBreaker",
)
DEFAULT_SERVER_MIDDLEWARE = (
    "resilience.middleware.RequestLogging",
    "resilience.middleware.ConcurrencyLimit",
)


@dataclasses.dataclass(frozen=True)
class GlobalSettings:
    """The framework's settings; field names are the setting names."""

    INSTALLED_APPS: tuple[str, ...] = option(
        ("apps.cache",), "Dotted paths of the app packages whose services are served."
    )
    SERVER_MIDDLEWARE: tuple[str, ...] = option(
        DEFAULT_SERVER_MIDDLEWARE, "One stack around every served method, outermost first."
    )
    SERVER_OPTIONS: dict[str, dict[str, Any]] = option(
        None, "Options per server middleware name: {ConcurrencyLimit = {max_in_flight = 64}}."
    )
    CLIENT_MIDDLEWARE: tuple[str, ...] = option(
        DEFAULT_CLIENT_MIDDLEWARE, "The default client chain for every method, outermost first."
    )
    CLIENT_METHOD_MIDDLEWARE: dict[str, tuple[str, ...]] = option(
        None,
        "A chain per 'package.Service/Method' (or per 'package.Service'); it replaces "
        "CLIENT_MIDDLEWARE for that method.",
    )
    CLIENT_OPTIONS: dict[str, dict[str, Any]] = option(
        None, "Options per client middleware name, for every method: {Retry = {max_attempts = 3}}."
    )
    CLIENT_METHOD_OPTIONS: dict[str, dict[str, dict[str, Any]]] = option(
        None,
        "Per-method overrides of CLIENT_OPTIONS, keyed by 'package.Service/Method' or "
        "'package.Service'; the most specific key wins, option by option.",
    )
    IDEMPOTENT_METHODS: tuple[str, ...] = option(
        (),
        "Methods ('package.Service/Method') or services that are safe to retry and hedge, "
        "besides those whose proto says idempotency_level = NO_SIDE_EFFECTS or IDEMPOTENT.",
    )
    ASYNCIO: bool = option(
        False, "Serve and call with grpc.aio; runserver/runclient --asyncio set it for one run."
    )
    SERVER_ADDRESS: str = option("127.0.0.1:50051", "Where runserver listens (HOST:PORT).")
    SERVER_MAX_WORKERS: int = option(16, "Threads serving RPCs in the sync server.", ge=1)
    SERVER_GRACE_PERIOD: float = option(
        5.0, "Seconds in-flight RPCs get to finish on SIGTERM/SIGINT.", ge=0
    )
    CLIENT_TARGET: str = option("127.0.0.1:50051", "Where runclient connects (HOST:PORT).")
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = option(
        "INFO", "The lowest level that is logged."
    )
    LOG_FORMAT: Literal["console", "json"] = option(
        "console", "'console' for people, 'json' for log pipelines."
    )

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if getattr(self, field.name) is None:
                object.__setattr__(self, field.name, {})


SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(GlobalSettings))
