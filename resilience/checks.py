"""System checks as data: each problem is a message with a hint, a stable id and a setting;
each check is a function registered with tags, as Django's are.

``manage.py check`` runs the registered checks and prints every message at once;
runserver and runclient refuse to start on any error. Ids are stable so that docs, users
and ``SILENCED_CHECKS`` can refer to them, and each check declares the ids it reports, so
that an id nothing reports can be told from one that has nothing to say today.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Collection, Iterable
from typing import Any, Literal, TypeVar

Level = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
#: The levels in order, as Django's: ``check --fail-level`` compares with these.
LEVELS: dict[str, int] = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
#: The prefix of the environment variables dynaconf reads as settings.
ENVVAR_PREFIX = "RESILIENCE_"
#: The namespace of resilience's own ids; every one is declared by the check reporting it.
OWN_PREFIX = "resilience."


@dataclasses.dataclass(frozen=True)
class CheckMessage:
    """One problem. ``origin`` says where the value came from when it was not the settings
    file (an environment variable, the secrets file), so the fix is made where it belongs;
    ``with_origins`` in resilience.conf.validation fills it in for every message.

    ``obj`` is the name the message is about when the setting holds many (a method name in
    a per-method key or an option, a middleware's options table), so that code acting on
    messages reads fields, never the text meant for people."""

    level: Level
    id: str
    setting: str
    msg: str
    hint: str = ""
    origin: str = ""
    obj: str = ""

    def is_serious(self, level: str = "ERROR") -> bool:
        """At or above ``level``: what ``check --fail-level`` fails on."""
        return LEVELS[self.level] >= LEVELS[level]

    @property
    def is_error(self) -> bool:
        return self.is_serious("ERROR")

    def format(self, env: str) -> str:
        where = f"environment '{env}'"
        if self.origin:
            where += (f", set by environment variable {self.origin}"
                      if self.origin.startswith(ENVVAR_PREFIX) else f", set in {self.origin}")
        text = f"{self.level} {self.id} {self.setting} ({where}): {self.msg}"
        return f"{text}\n    HINT: {self.hint}" if self.hint else text


def error(id: str, setting: str, msg: str, hint: str = "", *, obj: str = "") -> CheckMessage:
    return CheckMessage("ERROR", id, setting, msg, hint, obj=obj)


def warning(id: str, setting: str, msg: str, hint: str = "", *, obj: str = "") -> CheckMessage:
    return CheckMessage("WARNING", id, setting, msg, hint, obj=obj)


def unique(messages: list[CheckMessage]) -> list[CheckMessage]:
    """Drop repeats: one bad option shows up once, not once per method."""
    return list(dict.fromkeys(messages))


def unsilenced(messages: Iterable[CheckMessage], silenced: Collection[str]) -> list[CheckMessage]:
    """The messages whose ids ``SILENCED_CHECKS`` does not list."""
    return [m for m in messages if m.id not in silenced]


class Tags(enum.StrEnum):
    """The tags of resilience's own checks, which ``check --tag`` selects by. A check of
    an app's or a project's own may use any other string."""

    #: Values and types of settings; the secrets file.
    settings = "settings"
    #: Names that match nothing: settings, sections, options tables, method names,
    #: PROTO_MODULES, SILENCED_CHECKS.
    names = "names"
    #: The chains: middleware paths, sides, options, duplicates, Retry with Hedging.
    middleware = "middleware"
    #: What asyncio mode adds: middleware that cannot run or run adapted, async servicers.
    asyncio = "asyncio"
    #: The installed apps: imports, services, generated code, each AppConfig.check.
    apps = "apps"
    #: Middleware that keep their state in Redis, and REDIS_URL.
    redis = "redis"
    #: TLS files and settings, plaintext, authentication; with --deploy, what production
    #: must not run with.
    security = "security"


#: A check: given the run's context (``resilience.conf.validation.CheckContext`` for the
#: registry's own), the messages it finds, or none.
Check = Callable[[Any], Iterable[CheckMessage]]
C = TypeVar("C", bound=Check)


@dataclasses.dataclass(frozen=True)
class RegisteredCheck:
    """A check with what the registry knows of it: its tags, the ids it may report, and
    whether it runs only with ``--deploy``."""

    func: Check
    tags: frozenset[str]
    ids: frozenset[str]
    deploy: bool

    @property
    def name(self) -> str:
        return f"{self.func.__module__}.{self.func.__qualname__}"


class CheckRegistry:
    """The registered checks, in registration order, so that output order is stable."""

    def __init__(self) -> None:
        self._checks: dict[str, RegisteredCheck] = {}

    def register(self, *tags: str, ids: Iterable[str] = (), deploy: bool = False
                 ) -> Callable[[C], C]:
        """Register the decorated function under ``tags``. ``ids`` lists every id it may
        report (required for ``resilience.`` ids); ``deploy`` runs it only with
        ``check --deploy`` (and always in production)."""
        if not tags:
            raise TypeError("a check needs at least one tag")

        def decorate(func: C) -> C:
            check = RegisteredCheck(func, frozenset(map(str, tags)), frozenset(ids), deploy)
            self._checks[check.name] = check  # a reloaded module replaces its checks
            return func

        return decorate

    def checks(self, tags: Iterable[str] | None = None, *, include_deploy: bool = False
               ) -> list[RegisteredCheck]:
        """The checks that carry any of ``tags`` (every check for None)."""
        wanted = None if tags is None else set(map(str, tags))
        return [
            check for check in self._checks.values()
            if (include_deploy or not check.deploy)
            and (wanted is None or not wanted.isdisjoint(check.tags))
        ]

    def tags_available(self, *, include_deploy: bool = False) -> set[str]:
        return {tag for check in self.checks(include_deploy=include_deploy)
                for tag in check.tags}

    def ids(self) -> frozenset[str]:
        """Every id some check declares, deployment checks included."""
        return frozenset(id_ for check in self._checks.values() for id_ in check.ids)

    def run(self, context: Any, tags: Iterable[str] | None = None, *,
            include_deploy: bool = False) -> list[CheckMessage]:
        """Run the selected checks in order. A check that reports an own id it did not
        declare is a bug here, raised so that the tests that run it find it."""
        messages: list[CheckMessage] = []
        for check in self.checks(tags, include_deploy=include_deploy):
            found = list(check.func(context))
            for message in found:
                if not isinstance(message, CheckMessage):
                    raise TypeError(f"check {check.name} returned {message!r}, not a "
                                    f"CheckMessage")
                if message.id.startswith(OWN_PREFIX) and message.id not in check.ids:
                    raise TypeError(f"check {check.name} reported {message.id}, which its "
                                    f"register(..., ids=...) does not declare")
            messages += found
        return messages


registry = CheckRegistry()
register = registry.register
