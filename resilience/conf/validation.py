"""Every check of the settings and the chains they describe, for ``manage.py check``."""

from __future__ import annotations

from resilience.apps.registry import Apps, load_apps
from resilience.checks import CheckMessage, error, unique, warning
from resilience.conf.chains import ChainResolver, lookup, service_of
from resilience.conf.global_settings import SETTING_NAMES
from resilience.conf.settings import Settings
from resilience.core.errors import ImproperlyConfigured


def _setting_problems(settings: Settings) -> list[CheckMessage]:
    # "setting 'X' is 'v'; expected ..." -> "is 'v'; expected ...": keep the offending value.
    return [
        error("resilience.E001", name, message.removeprefix(f"setting '{name}' "),
              f"fix {name} in {settings.path}; see the settings reference")
        for name, message in settings.problems
    ]


def _unknown_settings(settings: Settings, apps: Apps | None) -> list[CheckMessage]:
    prefixes = tuple(
        config.name.rpartition(".")[2].upper() + "_" for config in (apps.configs if apps else ())
    )
    return [
        warning("resilience.W001", key, "is not a setting of resilience or of an installed app",
                "check the spelling; app settings start with the app's label, like CACHE_")
        for key in settings.raw
        if key not in SETTING_NAMES and not key.startswith(prefixes)
    ]


def _apps(settings: Settings) -> tuple[Apps | None, list[CheckMessage]]:
    try:
        apps = load_apps(settings.INSTALLED_APPS)
    except ImproperlyConfigured as exc:
        return None, [error("resilience.E007", "INSTALLED_APPS", str(exc),
                            "list importable app packages, such as 'apps.cache'")]
    messages = [message for config in apps.configs for message in config.check(settings)]
    messages += [
        warning("resilience.W002", "INSTALLED_APPS", f"app '{config.name}' declares no services",
                "add Service entries to its AppConfig.services, or remove the app")
        for config in apps.configs
        if not config.services
    ]
    if settings.ASYNCIO:
        messages += [
            error("resilience.E010", "INSTALLED_APPS",
                  f"app '{config.name}' serves {service.full_name} without an async "
                  f"servicer, and ASYNCIO is on",
                  "add an async servicer to the app's Service (async_servicer=...), or "
                  "turn ASYNCIO off")
            for config in apps.configs
            for service in config.services
            if service.async_servicer is None
        ]
    return apps, messages


def _method_keys(settings: Settings, methods: set[str]) -> list[CheckMessage]:
    """Keys of the per-method tables must name a served method or service."""
    services = {service_of(m) for m in methods}
    messages = []
    for setting in ("CLIENT_METHOD_MIDDLEWARE", "CLIENT_METHOD_OPTIONS"):
        for key in getattr(settings, setting):
            if key in methods or key in services:
                continue
            if "/" not in key and "." not in key:
                msg = f"key '{key}' is not 'package.Service/Method' or 'package.Service'"
            else:
                msg = f"key '{key}' names no method or service of an installed app"
            messages.append(error(
                "resilience.E008", setting, msg,
                f"known methods: {', '.join(sorted(methods)) or 'none'}",
            ))
    return messages


def _unused_options(settings: Settings, used: dict[str, set[str]]) -> list[CheckMessage]:
    """Options for a middleware that no chain lists are almost always a typo."""
    messages = []
    tables = {
        "SERVER_OPTIONS": ("server", settings.SERVER_OPTIONS),
        "CLIENT_OPTIONS": ("client", settings.CLIENT_OPTIONS),
        **{
            f'CLIENT_METHOD_OPTIONS."{key}"': ("client", table)
            for key, table in settings.CLIENT_METHOD_OPTIONS.items()
        },
    }
    for setting, (side, table) in tables.items():
        for name in table:
            if lookup({n: n for n in used[side]}, name) is None:
                messages.append(warning(
                    "resilience.W003", f"{setting}.{name}",
                    f"options for '{name}', which no {side} chain lists",
                    f"use the middleware's class name; {side} chains list: "
                    f"{', '.join(sorted(used[side])) or 'nothing'}",
                ))
    return messages


def run_checks(settings: Settings) -> tuple[Apps | None, list[CheckMessage]]:
    """Check everything; return the apps (if they loaded) and every message, errors first."""
    messages = _setting_problems(settings)
    apps, app_messages = _apps(settings)
    messages += app_messages + _unknown_settings(settings, apps)
    if apps is not None:
        methods = apps.methods()
        resolver = ChainResolver(settings)
        for side in ("server", "client"):
            for method in methods:
                resolver.resolve(side, method)
        messages += resolver.problems + _method_keys(settings, set(methods))
        messages += _unused_options(settings, resolver.listed)
    messages = unique(messages)
    messages.sort(key=lambda m: not m.is_error)
    return apps, messages
