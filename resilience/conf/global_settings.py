"""Every framework setting, its type, its default and what it is for: the one home of them.

A project's ``settings/settings.toml`` overrides these per environment. Apps may add their
own settings, named with the app's label as prefix (``CACHE_MAX_VALUE_BYTES``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from resilience.conf.addresses import (
    bind_address_problem,
    http_address_problem,
    server_name_problem,
    target_problem,
)
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
        (), "Dotted paths of the app packages whose services are served."
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
    PROTO_MODULES: tuple[str, ...] = option(
        (),
        "Dotted paths of generated *_pb2 modules whose services an application without "
        "apps serves or calls; check and the interceptors check method names against them.",
    )
    IDEMPOTENT_METHODS: tuple[str, ...] = option(
        (),
        "Methods ('package.Service/Method') or services that are safe to retry and hedge, "
        "besides those whose proto says idempotency_level = NO_SIDE_EFFECTS or IDEMPOTENT.",
    )
    SILENCED_CHECKS: tuple[str, ...] = option(
        (),
        "Ids of check messages to acknowledge and no longer report ('resilience.W070'): "
        "check, runserver, runclient and the interceptors leave them out.",
    )
    ASYNCIO: bool = option(
        False, "Serve and call with grpc.aio; runserver/runclient --asyncio set it for one run."
    )
    SERVER_ADDRESS: str = option(
        "127.0.0.1:50051", "Where runserver listens (HOST:PORT; port 0 picks one).",
        check=bind_address_problem,
    )
    SERVER_MAX_WORKERS: int = option(16, "Threads serving RPCs in the sync server.", ge=1)
    SERVER_GRACE_PERIOD: float = option(
        5.0, "Seconds in-flight RPCs get to finish on SIGTERM/SIGINT.", ge=0
    )
    CLIENT_TARGET: str = option(
        "127.0.0.1:50051",
        "Where runclient connects: HOST:PORT, or a grpc target such as dns:///HOST:PORT.",
        check=target_problem,
    )
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = option(
        "INFO", "The lowest level that is logged."
    )
    LOG_FORMAT: Literal["console", "json"] = option(
        "console", "'console' for people, 'json' for log pipelines."
    )
    # TLS and mutual TLS (file paths belong in settings/.secrets.toml).
    TLS_CERT_FILE: str = option("", "Server certificate chain (PEM); with TLS_KEY_FILE, serve TLS.")
    TLS_KEY_FILE: str = option("", "Server private key (PEM).")
    TLS_CLIENT_CA_FILE: str = option(
        "", "CA certificates (PEM) that client certificates are verified against."
    )
    TLS_REQUIRE_CLIENT_CERT: bool = option(
        False, "Mutual TLS: refuse clients without a certificate signed by TLS_CLIENT_CA_FILE."
    )
    CLIENT_TLS: bool = option(
        False, "Connect with TLS even without CLIENT_TLS_* files (trusting the system's CAs)."
    )
    CLIENT_TLS_CA_FILE: str = option(
        "", "CA certificates (PEM) that verify the server; empty trusts the system's CAs."
    )
    CLIENT_TLS_CERT_FILE: str = option("", "Client certificate chain (PEM) for mutual TLS.")
    CLIENT_TLS_KEY_FILE: str = option("", "Client private key (PEM) for mutual TLS.")
    CLIENT_TLS_SERVER_NAME: str = option(
        "", "Name the server's certificate must carry, when the target does not (an IP).",
        check=server_name_problem,
    )
    ALLOW_PLAINTEXT: bool = option(
        True, "Allow serving and connecting without TLS; false refuses plaintext."
    )
    METRICS_ENABLED: bool = option(
        True,
        "Export Prometheus metrics; false: no metrics endpoint, no collectors, and the "
        "Metrics middleware leaves every chain.",
    )
    METRICS_SERVER_ADDRESS: str = option(
        "127.0.0.1:9464", "Where runserver serves /metrics (HOST:PORT; port 0 picks one).",
        check=http_address_problem,
    )
    METRICS_CLIENT_ADDRESS: str = option(
        "127.0.0.1:0",
        "Where runclient load serves /metrics while it runs (HOST:PORT); the default port 0 "
        "picks a free one, so that loads can run side by side.",
        check=http_address_problem,
    )
    HEALTH_SATURATION_SECONDS: float = option(
        0.0,
        "Report NOT_SERVING for the server ('') while its ConcurrencyLimit or AdaptiveLimit "
        "has been full for longer than this many seconds; 0 turns it off.",
        ge=0,
    )
    REDIS_URL: str = option(
        "", "Redis for state shared by replicas (redis://HOST:PORT/DB); '' = none. Used by "
            "middleware with storage = 'redis'.",
        secret=True,  # it may carry a password: redis://:PASSWORD@HOST:PORT/DB
    )
    REDIS_MAX_CONNECTIONS: int = option(
        50, "Connections per process (per event loop under asyncio) to REDIS_URL.", ge=1
    )
    REDIS_TIMEOUT: float = option(
        0.05, "Seconds a Redis connect or command may take before the call falls back "
              "(redis_unavailable); keep it well under your deadlines.", gt=0
    )
    REDIS_KEY_PREFIX: str = option(
        "resilience", "Prefix of every Redis key, so that several deployments can share one "
                      "Redis."
    )
    REDIS_RETRY_INTERVAL: float = option(
        1.0, "Seconds after a Redis failure before Redis is tried again; meanwhile calls "
             "use the fallback at no cost.", gt=0
    )

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if getattr(self, field.name) is None:
                object.__setattr__(self, field.name, {})


SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(GlobalSettings))
