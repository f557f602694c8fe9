"""The interceptors' settings: loaded and checked as ``manage.py check`` checks them, with
the checks adjusted to interceptors, which serve methods no installed app declares."""

from __future__ import annotations

import copy
import dataclasses
import os

import structlog

from resilience.checks import CheckMessage, Tags, registry, unique, unsilenced
from resilience.conf.chains import ChainResolver, service_of
from resilience.conf.names import unchecked_method_names
from resilience.conf.settings import Settings, load_settings
from resilience.conf.validation import run_checks
from resilience.core.call import Side
from resilience.core.errors import ImproperlyConfigured

log = structlog.get_logger(__name__)

SettingsArg = Settings | str | os.PathLike[str] | None

# Stands for "any method" when no installed app names one, so that the default client
# chain is still checked; it reads as the template it is in check's messages.
_ANY_METHOD = "package.Service/Method"


def _in_mode(settings: Settings, is_async: bool) -> Settings:
    """``settings`` with ASYNCIO set to the interceptor's mode, for the mode checks."""
    if settings.ASYNCIO is is_async:
        return settings
    moded = copy.copy(settings)
    moded.core = dataclasses.replace(settings.core, ASYNCIO=is_async)
    return moded


# Checks that a method name belongs to an installed app; the name is the message's obj.
_METHOD_NAME_CHECKS = frozenset({
    "resilience.E008",  # CLIENT_METHOD_MIDDLEWARE / CLIENT_METHOD_OPTIONS keys
    "resilience.E050",  # IDEMPOTENT_METHODS
    "resilience.E072",  # method names inside options
})
# What runserver refuses of the apps' servicers: the interceptors serve the application's.
_SERVICER_CHECKS = frozenset({"resilience.E010", "resilience.E074"})


def _bad_method_key(key: str, app_services: set[str], app_methods: set[str]) -> bool:
    """E008/E050 for an interceptor: a name that is no method name at all, or a method an
    installed app's service lacks. Other services are the application's own."""
    if "/" not in key and "." not in key:
        return True
    service = service_of(key)
    return service in app_services and key != service and key not in app_methods


def _side_of(setting: str) -> Side:
    """The side an options table (W003's setting) is read by."""
    return "server" if setting.startswith("SERVER_") else "client"


def _interceptor_checks(settings: Settings) -> list[CheckMessage]:
    """check's messages, adjusted to interceptors: they serve methods no app declares.

    With PROTO_MODULES the application's own methods are known too, and every method name
    is checked as strictly as check does; without it, names of services no app declares
    pass, and W072 says that they went unchecked. The security checks are left out: the
    application passes its own credentials. Messages are told apart by their fields (id,
    setting, obj), never by their text."""
    tags = registry.tags_available() - {Tags.security}
    apps, messages = run_checks(settings, tags)
    app_methods = set(apps.methods()) if apps is not None else set()
    app_services = {service_of(m) for m in app_methods}
    # Chains no app method made check resolve: the default chains, and each per-method key.
    resolver = ChainResolver(settings)
    if not app_methods:
        resolver.resolve("server", _ANY_METHOD)
        resolver.resolve("client", _ANY_METHOD)
    for table in (settings.CLIENT_METHOD_MIDDLEWARE, settings.CLIENT_METHOD_OPTIONS):
        for key in table:
            if key not in app_methods:
                resolver.resolve("client", key)
    listed = {side: {name.lower() for name in names} for side, names in resolver.listed.items()}
    kept = []
    for message in messages:
        if message.id in _SERVICER_CHECKS:
            continue
        if (message.id in _METHOD_NAME_CHECKS and not settings.PROTO_MODULES
                and not _bad_method_key(message.obj, app_services, app_methods)):
            continue
        if (message.id == "resilience.W003"  # unused, unless a chain resolved here lists it
                and message.obj.lower() in listed[_side_of(message.setting)]):
            continue
        kept.append(message)
    if not settings.PROTO_MODULES:
        kept += unchecked_method_names(settings, app_services)
    return unsilenced(unique(kept + resolver.problems), settings.SILENCED_CHECKS)


def load(settings: SettingsArg = None, *, is_async: bool = False) -> Settings:
    """The settings (a Settings object, a settings file's path, or None for the usual
    lookup: $RESILIENCE_SETTINGS, else settings/settings.toml, in $RESILIENCE_ENV), checked
    as ``manage.py check`` does for the given mode.

    Raises ImproperlyConfigured listing every error; warnings are logged.
    """
    if not isinstance(settings, Settings):
        try:
            settings = load_settings(settings)
        except ImproperlyConfigured as exc:
            raise ImproperlyConfigured(f"ERROR resilience.E000 settings: {exc}") from None
    settings = _in_mode(settings, is_async)
    messages = _interceptor_checks(settings)
    errors = [m for m in messages if m.is_error]
    if errors:
        lines = "\n".join(m.format(settings.env) for m in errors)
        raise ImproperlyConfigured(
            f"{len(errors)} configuration error(s) in {settings.path} "
            f"(environment '{settings.env}'):\n{lines}"
        )
    for message in messages:
        log.warning("settings_warning", id=message.id, setting=message.setting,
                    message=message.msg, hint=message.hint)
    return settings
