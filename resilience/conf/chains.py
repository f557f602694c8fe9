"""Resolve each method's chain from settings: which middleware, in what order, with what options.

Client options are looked up from the least to the most specific table, option by option:
the middleware's defaults, ``CLIENT_OPTIONS[name]``, ``CLIENT_METHOD_OPTIONS[service][name]``
and ``CLIENT_METHOD_OPTIONS[service/method][name]``, like gRPC service config's
most-specific match. The server has one stack, so only ``SERVER_OPTIONS[name]``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from google.protobuf import descriptor_pool
from google.protobuf.descriptor_pb2 import MethodOptions

from resilience.checks import CheckMessage, error, warning
from resilience.conf.settings import Settings
from resilience.core.adapters import SYNC_MIDDLEWARE_THREADS
from resilience.core.call import Side
from resilience.core.chain import MiddlewareSpec
from resilience.core.errors import ImproperlyConfigured
from resilience.core.loading import import_string
from resilience.core.middleware import Middleware
from resilience.core.options import build_options


def service_of(method: str) -> str:
    return method.partition("/")[0]


def proto_idempotent(method: str) -> bool:
    """What the method's proto says: ``idempotency_level`` NO_SIDE_EFFECTS or IDEMPOTENT.

    Generated ``*_pb2`` modules register their descriptors in protobuf's default pool when
    imported, which a stub's module does; a method unknown there is not idempotent.
    """
    try:
        descriptor = descriptor_pool.Default().FindMethodByName(method.replace("/", "."))
    except KeyError:
        return False
    return descriptor.GetOptions().idempotency_level != MethodOptions.IDEMPOTENCY_UNKNOWN


def lookup(table: Mapping[str, Any], key: str) -> Any:
    """Case-insensitive lookup, since environment variables arrive upper-case."""
    if key in table:
        return table[key]
    lowered = key.lower()
    for k, v in table.items():
        if k.lower() == lowered:
            return v
    return None


class ChainResolver:
    """Turns settings into ``MiddlewareSpec`` lists and collects every problem on the way."""

    def __init__(self, settings: Settings, is_async: bool | None = None) -> None:
        self.settings = settings
        self.is_async = settings.ASYNCIO if is_async is None else is_async
        self.problems: list[CheckMessage] = []
        self._imported: dict[str, type[Middleware] | None] = {}
        # Names of the middleware each side's chains list, even those whose options are bad.
        self.listed: dict[str, set[str]] = {"client": set(), "server": set()}

    def is_idempotent(self, method: str) -> bool:
        """The proto's word, or the IDEMPOTENT_METHODS setting naming the method or service."""
        listed = self.settings.IDEMPOTENT_METHODS
        return method in listed or service_of(method) in listed or proto_idempotent(method)

    def middleware_setting(self, side: Side, method: str) -> tuple[str, tuple[str, ...]]:
        """The setting that supplies ``method``'s chain, and the chain's dotted paths."""
        if side == "server":
            return "SERVER_MIDDLEWARE", self.settings.SERVER_MIDDLEWARE
        per_method = self.settings.CLIENT_METHOD_MIDDLEWARE
        for key in (method, service_of(method)):
            if key in per_method:
                return f'CLIENT_METHOD_MIDDLEWARE."{key}"', per_method[key]
        return "CLIENT_MIDDLEWARE", self.settings.CLIENT_MIDDLEWARE

    def option_tables(self, side: Side, method: str) -> list[tuple[str, Mapping[str, Any]]]:
        """(setting name, table of options per middleware name), least specific first."""
        if side == "server":
            return [("SERVER_OPTIONS", self.settings.SERVER_OPTIONS)]
        per_method = self.settings.CLIENT_METHOD_OPTIONS
        tables = [("CLIENT_OPTIONS", self.settings.CLIENT_OPTIONS)]
        for key in (service_of(method), method):
            if key in per_method:
                tables.append((f'CLIENT_METHOD_OPTIONS."{key}"', per_method[key]))
        return tables

    def resolve(self, side: Side, method: str) -> list[MiddlewareSpec]:
        """The specs of ``method``'s chain on ``side``; problems go to ``self.problems``."""
        setting, paths = self.middleware_setting(side, method)
        specs = []
        seen: set[str] = set()
        for path in paths:
            factory = self._import(setting, path, side)
            if factory is None:
                continue
            name = factory.__name__
            if name in seen:
                self.problems.append(error(
                    "resilience.E006", setting,
                    f"'{path}' is listed twice; both would read the same options",
                    "list each middleware once per chain",
                ))
                continue
            seen.add(name)
            self.listed[side].add(name)
            options = self._options(side, method, name, factory)
            if options is not None:
                specs.append(MiddlewareSpec(path, factory, name, options))
        self._check_retry_and_hedging(setting, method, specs)
        return specs

    def _check_retry_and_hedging(
        self, setting: str, method: str, specs: list[MiddlewareSpec]
    ) -> None:
        """gRFC A6 gives a method a retry policy or a hedging policy, never both: hedges
        that are each retried multiply the load on the server. Told by the classes'
        ``repeats_calls`` flag (Retry, Hedging), so composition imports no middleware."""
        repeaters = [s for s in specs if s.factory.repeats_calls]
        if len(repeaters) > 1:
            outer, inner = repeaters[:2]
            self.problems.append(error(
                "resilience.E011", setting,
                f"{method} is configured to repeat calls twice, by '{outer.path}' and "
                f"'{inner.path}'; gRFC A6 allows one policy (retry or hedging) per method, "
                f"since each attempt of one would be repeated by the other",
                f'remove one of them from {setting}, or give {method} a chain of its own '
                f'with CLIENT_METHOD_MIDDLEWARE."{method}"',
            ))

    def _import(self, setting: str, path: str, side: Side) -> type[Middleware] | None:
        if path not in self._imported:
            self._imported[path] = self._import_uncached(setting, path)
        factory = self._imported[path]
        if factory is not None and not self._mode_ok(setting, path, factory):
            return None
        if factory is not None and side not in factory.sides:
            other = "CLIENT" if side == "server" else "SERVER"
            self.problems.append(error(
                "resilience.E004", setting,
                f"'{path}' is a {'/'.join(sorted(factory.sides))} middleware and cannot run "
                f"on the {side}",
                f"move it to {other}_MIDDLEWARE or remove it from {setting}",
            ))
            return None
        return factory

    def _mode_ok(self, setting: str, path: str, factory: type[Middleware]) -> bool:
        """Can ``factory`` run in this resolver's mode? Warn when it runs only adapted."""
        if self.is_async and not factory.async_capable and factory.sync_capable:
            self.problems.append(warning(
                "resilience.W004", setting,
                f"'{path}' is sync-only: in asyncio mode it runs in a worker thread, two "
                f"thread hops per call, and at most {SYNC_MIDDLEWARE_THREADS} calls at once "
                f"can be inside it",
                "give it an async path (acall) and set async_capable = True",
            ))
        if factory.sync_capable or (self.is_async and factory.async_capable):
            return True
        fix = ("set ASYNCIO = true (or pass --asyncio)" if factory.async_capable
               else "set sync_capable or async_capable on the class")
        self.problems.append(error(
            "resilience.E009", setting,
            f"'{path}' cannot run in {'asyncio' if self.is_async else 'sync'} mode "
            f"(sync_capable={factory.sync_capable}, async_capable={factory.async_capable})",
            f"{fix}, or remove it from {setting}",
        ))
        return False

    def _import_uncached(self, setting: str, path: str) -> type[Middleware] | None:
        try:
            obj = import_string(path)
        except ImproperlyConfigured as exc:
            # A missing module or attribute is a misspelling; anything else is the module's
            # own error (a SyntaxError, an import of its own), to fix there.
            spelling = ": no module named '" in str(exc) or "' defines no '" in str(exc)
            self.problems.append(error(
                "resilience.E002", setting, str(exc),
                "check the spelling; built-in middleware live in resilience.middleware"
                if spelling else f"fix the error in the module of '{path}', or remove it "
                f"from {setting}",
            ))
            return None
        if not (inspect.isclass(obj) and issubclass(obj, Middleware)):
            self.problems.append(error(
                "resilience.E003", setting,
                f"'{path}' is not a middleware: expected a subclass of "
                f"resilience.Middleware, got {type(obj).__name__} {obj!r}",
                "list middleware classes only; see docs/how-to/write-middleware.md",
            ))
            return None
        return obj

    def _options(
        self, side: Side, method: str, name: str, factory: type[Middleware]
    ) -> Any:
        merged: dict[str, Any] = {}
        sources = []
        for setting, table in self.option_tables(side, method):
            values = lookup(table, name)
            if values is None:
                continue
            if not isinstance(values, Mapping):
                self.problems.append(error(
                    "resilience.E005", f"{setting}.{name}",
                    f"is {values!r}; expected a table of options",
                    f"write it as [{setting}.{name}] with one key per option",
                ))
                return None
            merged.update(values)
            sources.append(f"{setting}.{name}")
        options, problems = build_options(factory.Options, merged)
        broken = {name for name, _ in self.settings.problems}
        if problems and any(setting.partition(".")[0] in broken
                            for setting, _ in self.option_tables(side, method)):
            # An option table that is not a table of tables has its own E001 and is
            # replaced by {}: what its middleware say of their defaults would only follow on.
            return None
        for message in problems:
            self.problems.append(error(
                "resilience.E005", " + ".join(sources) or name, f"{name}: {message}",
                f"see the options of {name} in docs/reference/middleware/{name.lower()}.md",
            ))
        return options
