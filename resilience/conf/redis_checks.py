"""Checks of the Redis settings (resilience.E040-E049, W040-W049), for ``manage.py check``."""

from __future__ import annotations

from collections.abc import Iterable

from resilience.checks import CheckMessage, error
from resilience.conf.chains import ChainResolver
from resilience.conf.settings import Settings
from resilience.distributed.connection import url_problem


def redis_users(settings: Settings, methods: Iterable[str]) -> list[str]:
    """'Name (side chain of method)' for every chain entry with storage = 'redis'."""
    resolver = ChainResolver(settings)
    return sorted({
        f"{spec.name} ({side} chain of {method})"
        for side in ("server", "client")
        for method in methods
        for spec in resolver.resolve(side, method)
        if getattr(spec.options, "storage", "local") == "redis"
    })


def redis_problems(settings: Settings, methods: Iterable[str]) -> list[CheckMessage]:
    """E040: middleware use Redis but REDIS_URL is empty; E041: REDIS_URL is malformed."""
    problem = url_problem(settings.REDIS_URL)
    if problem is None:
        return []
    users = redis_users(settings, methods)
    if not users:
        return []
    who = users[0] + (f" and {len(users) - 1} more" if len(users) > 1 else "")
    hint = ("set REDIS_URL = \"redis://HOST:6379/0\" (every replica the same), or set "
            "storage = \"local\" in those middleware's options")
    id_ = "resilience.E040" if not settings.REDIS_URL else "resilience.E041"
    verb = "have" if len(users) > 1 else "has"
    return [error(id_, "REDIS_URL", f"{problem}, but {who} {verb} storage = 'redis'", hint)]
