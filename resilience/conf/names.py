"""Check the names settings use against what exists, for ``manage.py check``.

A name looked up in a closed set (a setting, a middleware's options table, an option, a
served method) that matches nothing does nothing, silently: the server starts on the
defaults. Every such name gets a message: an error when it is within two edits of a known
name (``resilience.core.spelling``: a typo, with "did you mean"), a warning when it is
farther from everything (it may be the user's own setting). Names that must be served
methods (per-method keys, method names inside options) are errors either way, once the
served methods are known: from the installed apps or from ``PROTO_MODULES``
(resilience.E070-E079, W070-W079).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any

from resilience.apps.registry import Apps
from resilience.checks import CheckMessage, error, warning
from resilience.conf.chains import ChainResolver, lookup, service_of
from resilience.conf.global_settings import SETTING_NAMES
from resilience.conf.settings import Settings
from resilience.core.call import CallKind, Side
from resilience.core.loading import describe_exception
from resilience.core.middleware import Middleware
from resilience.core.options import build_options
from resilience.core.spelling import closest, did_you_mean

#: Sections dynaconf gives a meaning of its own; any other section is an environment.
SPECIAL_SECTIONS = ("default", "global")
#: The per-method settings, whose keys name a method or a service.
METHOD_KEY_SETTINGS = ("CLIENT_METHOD_MIDDLEWARE", "CLIENT_METHOD_OPTIONS", "IDEMPOTENT_METHODS")


def _app_prefixes(apps: Apps | None) -> tuple[str, ...]:
    return tuple(c.name.rpartition(".")[2].upper() + "_" for c in (apps.configs if apps else ()))


def setting_name_problems(settings: Settings, apps: Apps | None) -> list[CheckMessage]:
    """E070 for a key within two edits of a setting of resilience or of an installed app,
    W001 for any other unknown key. Keys with an app's prefix that are no near miss stay
    the app's business, as before."""
    app_settings = {name for config in (apps.configs if apps else ()) for name in config.settings}
    known = SETTING_NAMES | app_settings
    prefixes = _app_prefixes(apps)
    messages = []
    for key in settings.raw:
        if key in known:
            continue
        if (match := closest(key, known)) is not None:
            messages.append(error(
                "resilience.E070", key,
                f"is not a setting, so nothing reads it and {match} is left as it was "
                f"(did you mean '{match}'?)",
                f"rename it to {match} in {settings.path}; a setting of your own needs a "
                f"name of its own, starting with your app's label",
            ))
        elif not key.startswith(prefixes):
            messages.append(warning(
                "resilience.W001", key, "is not a setting of resilience or of an installed app",
                "check the spelling; app settings start with the app's label, like CACHE_",
            ))
    return messages


def section_problems(settings: Settings) -> list[CheckMessage]:
    """E075: a section one or two letters off [default] or [global] is an environment of
    its own to dynaconf, so what it holds reaches no other environment."""
    messages = []
    for section in settings.sections:
        lowered = section.lower()
        if lowered in SPECIAL_SECTIONS:
            continue
        if (match := closest(lowered, SPECIAL_SECTIONS)) is not None:
            messages.append(error(
                "resilience.E075", f"[{section}]",
                f"is an environment of its own, not [{match}]: its settings apply only "
                f"with --env {lowered}, and every other environment runs without them "
                f"(did you mean [{match}]?)",
                f"rename the section (and its sub-tables) to [{match}] in {settings.path}",
            ))
    return messages


def proto_methods(settings: Settings) -> tuple[dict[str, CallKind], list[CheckMessage]]:
    """The methods of the services in PROTO_MODULES' generated modules; E073 for an entry
    that does not import or is no generated module, W071 for one without services."""
    methods: dict[str, CallKind] = {}
    messages = []
    for entry in settings.PROTO_MODULES:
        try:
            module = importlib.import_module(entry)
        except Exception as exc:
            if isinstance(exc, ModuleNotFoundError) and exc.name and entry.startswith(exc.name):
                reason = f"no module named '{exc.name}'"
            else:
                reason = describe_exception(exc)
            messages.append(error(
                "resilience.E073", "PROTO_MODULES", f"'{entry}' does not import: {reason}",
                "list the dotted paths of your generated *_pb2 modules, such as "
                "'myproject.protos.orders_pb2', importable from where check runs (the "
                "project's root, or PYTHONPATH)",
            ))
            continue
        descriptor = getattr(module, "DESCRIPTOR", None)
        services = getattr(descriptor, "services_by_name", None)
        if services is None:
            fix = (f"name '{entry.removesuffix('_grpc')}' instead: the _pb2 module holds "
                   f"the descriptors" if entry.endswith("_pb2_grpc")
                   else "name the *_pb2 module protoc generated from the .proto")
            messages.append(error(
                "resilience.E073", "PROTO_MODULES",
                f"'{entry}' is not a generated *_pb2 module: it has no file DESCRIPTOR", fix,
            ))
            continue
        if not services:
            messages.append(warning(
                "resilience.W071", "PROTO_MODULES",
                f"'{entry}' declares no services, so it adds no method names to check",
                "name the *_pb2 module of the .proto that defines the service, or remove it",
            ))
        for service in services.values():
            for m in service.methods:
                methods[f"{service.full_name}/{m.name}"] = CallKind(
                    (m.client_streaming, m.server_streaming)
                )
    return methods, messages


def method_suggestion(name: str, methods: Iterable[str]) -> str:
    """" (did you mean 'x'?)" for a method or service name near a served one."""
    known = set(methods)
    return did_you_mean(name, known | {service_of(m) for m in known})


def _builtin_middleware() -> dict[str, type[Middleware]]:
    """The built-in middleware classes, by name."""
    import resilience.middleware as builtins  # the package imports the transports

    return {name: getattr(builtins, name) for name in builtins.__all__}


def option_table_problems(settings: Settings, listed: Mapping[str, set[str]]
                          ) -> list[CheckMessage]:
    """Options tables named for no middleware a chain lists: E071 for a name within two
    edits of a listed or built-in middleware (the one meant runs on its defaults), W003
    for any other; and E005 for an unknown option in a built-in's table that no chain
    lists yet (an environment may list it later)."""
    messages = []
    tables: dict[str, tuple[Side, Any]] = {
        "SERVER_OPTIONS": ("server", settings.SERVER_OPTIONS),
        "CLIENT_OPTIONS": ("client", settings.CLIENT_OPTIONS),
        **{
            f'CLIENT_METHOD_OPTIONS."{key}"': ("client", table)
            for key, table in settings.CLIENT_METHOD_OPTIONS.items()
        },
    }
    builtins = _builtin_middleware()
    for setting, (side, table) in tables.items():
        used = {n: n for n in listed[side]}
        candidates = set(used) | set(builtins)
        for name, values in table.items():
            if lookup(used, name) is not None:
                continue
            # A built-in's own name, even of the other side, is no typo (W003 says where).
            exact = lookup({n: n for n in builtins}, name)
            near = None if exact else closest(name, candidates)
            chains = ", ".join(sorted(listed[side])) or "nothing"
            if near is not None:
                where = "" if near in used else f", which no {side} chain lists either"
                other = near in builtins and side not in builtins[near].sides
                fix = (f"{near} is a client middleware: its options go in CLIENT_OPTIONS"
                       if other and side == "server" else
                       f"{near} is a server middleware: its options go in SERVER_OPTIONS"
                       if other else f"rename the table to [{setting}.{near}]")
                messages.append(error(
                    "resilience.E071", f"{setting}.{name}",
                    f"options for '{name}', which is no middleware (did you mean "
                    f"'{near}'{where}?); nothing reads them",
                    f"{fix}; {side} chains list: {chains}",
                ))
                continue
            messages.append(warning(
                "resilience.W003", f"{setting}.{name}",
                f"options for '{name}', which no {side} chain lists",
                f"use the middleware's class name; {side} chains list: {chains}", obj=name,
            ))
            if exact is not None and isinstance(values, Mapping):
                _, problems = build_options(builtins[exact].Options, values)
                messages += [
                    error("resilience.E005", f"{setting}.{name}", f"{exact}: {problem}",
                          f"see the options of {exact} in "
                          f"docs/reference/middleware/{exact.lower()}.md")
                    for problem in problems
                    if problem.startswith("unknown option")
                ]
    return messages


def _chain_names(resolver: ChainResolver, method: str) -> tuple[str, list[str]]:
    """The setting that gives ``method`` its client chain, and the chain's class names."""
    setting, paths = resolver.middleware_setting("client", method)
    return setting, [path.rpartition(".")[2] for path in paths]


def _lists(names: Iterable[str], name: str) -> bool:
    return any(n.lower() == name.lower() for n in names)


def _lacks(resolver: ChainResolver, method: str, name: str) -> str | None:
    """'SETTING (A, B)' when ``method``'s client chain does not list ``name``, else None."""
    setting, names = _chain_names(resolver, method)
    return None if _lists(names, name) else f"{setting} ({', '.join(names) or 'empty'})"


def _option_source(resolver: ChainResolver, side: Side, method: str, name: str,
                   option: str) -> str:
    """The most specific options table that sets ``option`` for ``name`` on ``method``."""
    source = name
    for setting, table in resolver.option_tables(side, method):
        values = lookup(table, name)
        if isinstance(values, Mapping) and lookup({k: k for k in values}, option) is not None:
            source = f"{setting}.{name}"
    return source


def option_method_problems(settings: Settings, methods: Iterable[str]) -> list[CheckMessage]:
    """E072: a method or service name inside an option (``Bulkhead.groups``,
    ``FaultInjection.methods``, ...) that nothing serves; W070: a client option naming a
    method whose own chain lacks the middleware. Either way the option does nothing for
    the method meant."""
    from resilience.middleware.auth import DEFAULT_EXEMPT  # served by runserver itself

    methods = set(methods)
    services = {service_of(m) for m in methods} | set(DEFAULT_EXEMPT)
    known = ", ".join(sorted(methods))
    resolver = ChainResolver(settings)
    messages = []
    sides: tuple[Side, ...] = ("server", "client")
    for side in sides:
        for method in sorted(methods):
            for spec in resolver.resolve(side, method):
                names = getattr(spec.options, "method_names", None)  # any Options class
                for option, target in names() if names else ():
                    source = _option_source(resolver, side, method, spec.name, option)
                    if target not in (methods if "/" in target else services):
                        messages.append(error(
                            "resilience.E072", source,
                            f"{spec.name}: option '{option}' names '{target}', which is no "
                            f"method or service of an installed app or of PROTO_MODULES"
                            f"{method_suggestion(target, methods)}; the option does "
                            f"nothing for it",
                            f"name a served method ('package.Service/Method') or service; "
                            f"known methods: {known}", obj=target,
                        ))
                    elif side == "client" and "/" in target and (
                            chain := _lacks(resolver, target, spec.name)):
                        messages.append(warning(
                            "resilience.W070", source,
                            f"{spec.name}: option '{option}' names {target}, whose chain "
                            f"{chain} does not list {spec.name}; the option does nothing "
                            f"for it",
                            f"add '{spec.path}' to that chain, or remove {target} from "
                            f"'{option}'",
                        ))
    return messages


def aimed_option_problems(settings: Settings, methods: Iterable[str],
                          listed: Mapping[str, set[str]]) -> list[CheckMessage]:
    """W070: CLIENT_METHOD_OPTIONS for a middleware that the chains of the method (or of
    every method of the service) the key names do not list. Middleware no client chain
    lists at all are W003's."""
    methods = sorted(methods)
    resolver = ChainResolver(settings)
    messages = []
    for key, table in settings.CLIENT_METHOD_OPTIONS.items():
        covered = [key] if key in methods else [m for m in methods if service_of(m) == key]
        if not covered:
            continue  # E008
        for name in table:
            if not _lists(listed["client"], name):
                continue
            lacking = [(m, _lacks(resolver, m, name)) for m in covered]
            if any(chain is None for _, chain in lacking):
                continue  # some method of the service runs it: service-wide options
            if key in methods:
                chains = f"whose chain {lacking[0][1]} does not list {name}"
            else:
                each = "; ".join(f"{m}: {chain}" for m, chain in lacking)
                chains = f"none of whose methods' chains lists {name} ({each})"
            setting = _chain_names(resolver, covered[0])[0]
            messages.append(warning(
                "resilience.W070", f'CLIENT_METHOD_OPTIONS."{key}".{name}',
                f"options for {name} aimed at {key}, {chains}; they do nothing",
                f"add {name} to {setting}, or remove the options",
            ))
    return messages


def well_formed(key: str) -> bool:
    """Does ``key`` look like 'package.Service/Method' or 'package.Service' at all?"""
    return "/" in key or "." in key


def unchecked_method_names(settings: Settings, services: set[str]) -> list[CheckMessage]:
    """W072: method keys of services nothing declares cannot be checked, so a misspelled
    one would silently do nothing; PROTO_MODULES makes them checkable."""
    unchecked = []
    for setting in METHOD_KEY_SETTINGS:
        keys = sorted(k for k in getattr(settings, setting)
                      if well_formed(k) and service_of(k) not in services)
        if keys:
            unchecked.append(f"{setting} {', '.join(repr(k) for k in keys)}")
    if not unchecked:
        return []
    return [warning(
        "resilience.W072", "PROTO_MODULES",
        f"declares the services of none of {'; '.join(unchecked)}, and no installed app "
        f"does: those method names are not checked, and a misspelled one would silently "
        f"do nothing",
        "list the generated modules of the services you serve and call: PROTO_MODULES = "
        "[\"myproject.protos.orders_pb2\"]",
    )]
