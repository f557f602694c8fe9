"""Every check of the settings and the chains they describe, for ``manage.py check``."""

from __future__ import annotations

import dataclasses
import inspect
import ipaddress
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from resilience.apps.config import AppConfig
from resilience.apps.registry import Apps, load_apps
from resilience.apps.servicers import require_async
from resilience.checks import CheckMessage, error, unique, warning
from resilience.conf.chains import ChainResolver, lookup, service_of
from resilience.conf.credentials import (
    channel_credentials,
    client_setting_problem,
    client_tls_enabled,
    plaintext_refusal,
    server_credentials,
    server_setting_problem,
    server_tls_enabled,
)
from resilience.conf.names import (
    aimed_option_problems,
    method_suggestion,
    option_method_problems,
    option_table_problems,
    proto_methods,
    section_problems,
    setting_name_problems,
    unchecked_method_names,
    well_formed,
)
from resilience.conf.redis_checks import redis_problems
from resilience.conf.settings import ENVVAR_PREFIX, SECRETS_FILE, Settings
from resilience.conf.tls_files import tls_file_problems
from resilience.core.errors import ImproperlyConfigured
from resilience.core.loading import describe_exception
from resilience.protos import app_protos, stale


def _setting_problems(settings: Settings) -> list[CheckMessage]:
    # "setting 'X' is 'v'; expected ..." -> "is 'v'; expected ...": keep the offending value.
    return [
        error("resilience.E001", name, message.removeprefix(f"setting '{name}' "),
              f"fix {_where_set(settings, name, message)}; see the settings reference")
        for name, message in settings.problems
    ]


def _where_set(settings: Settings, name: str, message: str) -> str:
    origin = settings.origin((name,), message)
    if origin and origin.startswith(ENVVAR_PREFIX):
        return f"the environment variable {origin} (or unset it)"
    return f"{name} in {origin or settings.path}"


def _setting_path(setting: str) -> tuple[str, ...]:
    """'CLIENT_METHOD_OPTIONS."pkg.S/M".Retry' -> ('CLIENT_METHOD_OPTIONS', 'pkg.S/M',
    'Retry'): a message's setting as keys."""
    return tuple(quoted or plain for quoted, plain in re.findall(r'"([^"]*)"|([^."]+)', setting))


def with_origins(messages: list[CheckMessage], settings: Settings) -> list[CheckMessage]:
    """Each message with where its value came from, when not from the settings file (an
    environment variable, the secrets file): the one place messages learn it."""
    named = []
    for message in messages:
        origin = next(filter(None, (
            settings.origin(_setting_path(part), message.msg)
            for part in message.setting.split(" + ")
        )), None)
        named.append(dataclasses.replace(message, origin=origin) if origin else message)
    return named


def _unread_secrets(settings: Settings) -> list[CheckMessage]:
    """W034: values in the secrets file that no environment reads. dynaconf reads only
    [default], [global] and the environments' sections, so a typo there ([prodution]) or a
    key outside any section would leave production without its secrets, silently."""
    secrets = settings.secrets
    if not secrets:
        return []
    file = settings.path.with_name(SECRETS_FILE)
    known = {*settings.environments, "default", "global"}
    messages = []
    for section, table in secrets.items():
        if not isinstance(table, dict):
            messages.append(warning(
                "resilience.W034", section,
                f"is set in {file} outside any section, so no environment reads it",
                f"move it under [{settings.env}] or [default] in {file}",
            ))
        elif section.lower() not in known:
            messages.append(warning(
                "resilience.W034", f"[{section}]",
                f"is a section of {file} that is no environment of {settings.path}, so its "
                f"values are never read",
                f"rename it to one of: {', '.join(sorted(known))}",
            ))
    return messages


def _unknown_settings(settings: Settings, apps: Apps | None) -> list[CheckMessage]:
    """E070 for a near miss of a setting's name, W001 for other unknown keys."""
    return setting_name_problems(settings, apps) + section_problems(settings)


def _app_check(config: AppConfig, settings: Settings) -> list[CheckMessage]:
    """The app's own check; one that raises is reported, not a traceback."""
    try:
        return list(config.check(settings))
    except Exception as exc:
        return [error("resilience.E007", "INSTALLED_APPS",
                      f"app '{config.name}': its check() raised {describe_exception(exc)}",
                      "fix the app's AppConfig.check")]


def _apps(settings: Settings) -> tuple[Apps | None, list[CheckMessage]]:
    failed = []
    for entry in settings.INSTALLED_APPS:  # one at a time, to report every broken app
        try:
            load_apps([entry])
        except ImproperlyConfigured as exc:
            missing = f"no module '{entry}.apps'" in str(exc)
            failed.append(error(
                "resilience.E007", "INSTALLED_APPS", str(exc),
                "list importable app packages, such as 'apps.cache'" if missing else
                f"fix the error in the app's code (the message says where), or remove "
                f"'{entry}' from INSTALLED_APPS",
            ))
    if failed:
        return None, failed
    apps = load_apps(settings.INSTALLED_APPS)
    messages = [message for config in apps.configs for message in _app_check(config, settings)]
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
        messages += _async_servicer_problems(apps)
    return apps, messages


def _async_servicer_problems(apps: Apps) -> list[CheckMessage]:
    """E074: what the asyncio server refuses at startup, a servicer method that is not
    ``async def`` (an async generator for response streams), or is missing. Only a class
    can be inspected without calling user code; a factory function is taken on trust."""
    messages = []
    for config in apps.configs:
        for service in config.services:
            factory = service.async_servicer
            if not inspect.isclass(factory):
                continue
            for method, kind in service.methods():
                short = method.rpartition("/")[2]
                behavior = getattr(factory, short, None)
                try:
                    if behavior is None:
                        raise ImproperlyConfigured(
                            f"servicer method {method} is missing from {factory.__qualname__}"
                        )
                    require_async(method, behavior, kind)
                except ImproperlyConfigured as exc:
                    messages.append(error(
                        "resilience.E074", "INSTALLED_APPS",
                        f"app '{config.name}': {exc}, and ASYNCIO is on: runserver would "
                        f"refuse to start",
                        f"define {factory.__qualname__}.{short} as 'async def' (with 'yield' "
                        f"for a response stream), or turn ASYNCIO off",
                    ))
    return messages


def _method_keys(settings: Settings, methods: set[str]) -> list[CheckMessage]:
    """Keys of the per-method tables must name a served method or service. With no method
    known at all only malformed keys are errors (W072 says the rest go unchecked)."""
    services = {service_of(m) for m in methods}
    messages = []
    for setting in ("CLIENT_METHOD_MIDDLEWARE", "CLIENT_METHOD_OPTIONS"):
        for key in getattr(settings, setting):
            if key in methods or key in services or (not methods and well_formed(key)):
                continue
            if not well_formed(key):
                msg = f"key '{key}' is not 'package.Service/Method' or 'package.Service'"
            else:
                msg = (f"key '{key}' names no method or service of an installed app or "
                       f"of PROTO_MODULES{method_suggestion(key, methods)}")
            messages.append(error(
                "resilience.E008", setting, msg,
                f"known methods: {', '.join(sorted(methods)) or 'none'}",
            ))
    return messages


def _unused_options(settings: Settings, used: dict[str, set[str]]) -> list[CheckMessage]:
    """Options for a middleware that no chain lists are almost always a typo (E071 when
    the name is close to a middleware's, W003 otherwise)."""
    return option_table_problems(settings, used)


# Apps and their generated code (resilience.E050-E059, W050-W059).
def _app_code_problems(settings: Settings, apps: Apps, methods: set[str]) -> list[CheckMessage]:
    """IDEMPOTENT_METHODS must name served methods, as the CLIENT_METHOD_* keys must (a typo
    there silently stops Retry); an app's stubs must not be older than its protos."""
    services = {service_of(m) for m in methods}
    messages = [
        error("resilience.E050", "IDEMPOTENT_METHODS",
              f"'{key}' names no method or service of an installed app or of "
              f"PROTO_MODULES{method_suggestion(key, methods)}",
              f"use 'package.Service/Method' or 'package.Service'; known methods: "
              f"{', '.join(sorted(methods)) or 'none'}")
        for key in settings.IDEMPOTENT_METHODS
        if key not in methods and key not in services and (methods or not well_formed(key))
    ]
    for config in apps.configs:
        app_dir = Path(sys.modules[type(config).__module__].__file__ or "").parent
        messages += [
            warning("resilience.W050", "INSTALLED_APPS",
                    f"app '{config.name}': the code generated from {proto.name} is out of "
                    f"date: {problem}",
                    f"run 'python manage.py genproto {config.name}'")
            for proto, problem in stale(app_protos(app_dir))
        ]
    return messages


#: A method name no setting can name: resolving it gives a side's default chain.
ANY_METHOD = "(any method)"


def run_checks(settings: Settings) -> tuple[Apps | None, list[CheckMessage]]:
    """Check everything; return the apps (if they loaded) and every message, errors first."""
    messages = _setting_problems(settings)
    apps, app_messages = _apps(settings)
    messages += app_messages + _unknown_settings(settings, apps)
    if apps is not None:
        protos, proto_messages = proto_methods(settings)
        methods = {**protos, **apps.methods()}
        messages += proto_messages
        resolver = ChainResolver(settings)
        for side in ("server", "client"):
            # The default chains too, so that they are checked even before an app serves
            # a method (an empty INSTALLED_APPS, a fresh project).
            for method in (*methods, ANY_METHOD):
                resolver.resolve(side, method)
        messages += resolver.problems + _method_keys(settings, set(methods))
        messages += _unused_options(settings, resolver.listed)
        messages += option_method_problems(settings, methods)
        messages += aimed_option_problems(settings, methods, resolver.listed)
        if not methods:
            messages += unchecked_method_names(settings, set())
        messages += redis_problems(settings, methods)
        messages += _app_code_problems(settings, apps, set(methods))
    messages += _unread_secrets(settings)
    messages = with_origins(unique(messages), settings)
    messages.sort(key=lambda m: not m.is_error)
    return apps, messages


# TLS and authentication (resilience.E030-E039, W030-W039).
def _tls_problems(settings: Settings, side: str) -> list[CheckMessage]:
    """Plaintext that ALLOW_PLAINTEXT forbids (E030 server, E031 client), TLS settings
    that cannot work together (E032), and every TLS file that cannot be read, is not PEM,
    holds the wrong thing or a key that is not its certificate's (E032-E035)."""
    secure = server_tls_enabled(settings) if side == "server" else client_tls_enabled(settings)
    if not secure and not settings.ALLOW_PLAINTEXT:
        what = (
            "TLS_CERT_FILE and TLS_KEY_FILE" if side == "server"
            else "CLIENT_TLS_CA_FILE (or CLIENT_TLS = true to trust the system's CAs)"
        )
        return [error(
            "resilience.E030" if side == "server" else "resilience.E031", "ALLOW_PLAINTEXT",
            plaintext_refusal(side),
            f"set {what} in settings/.secrets.toml (see settings/.secrets.toml.example), "
            f"or set ALLOW_PLAINTEXT = true for this environment",
        )]
    problem = (server_setting_problem if side == "server" else client_setting_problem)(settings)
    messages = [_e032(problem)] if problem else []
    # Every file of the side, each read and parsed (E032-E035), not only the first.
    messages += tls_file_problems(settings, (side,))
    if messages:
        return messages
    try:  # what grpc itself says of files that passed
        (server_credentials if side == "server" else channel_credentials)(settings)
    except ImproperlyConfigured as exc:
        return [_e032(str(exc))]
    return []


def _e032(problem: str) -> CheckMessage:
    """E032 from a sentence that starts with the setting it is about."""
    setting = problem.partition(" ")[0]
    return error("resilience.E032", setting, problem.removeprefix(f"{setting} "),
                 "fix the TLS settings (see the README's 'TLS and authentication')")


def _lists_middleware(chains: Iterable[Iterable[str]], name: str) -> bool:
    return any(path.rpartition(".")[2] == name for chain in chains for path in chain)


def _binds_beyond_loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a hostname, or empty: any interface
        return True


def _auth_problems(settings: Settings, deploy: bool) -> list[CheckMessage]:
    """TokenAuth peers that mTLS never presents (W033, always); with ``deploy``, servers open
    beyond loopback without TLS (W030), TLS servers anyone may call (W031) and tokens sent
    in plaintext (W032)."""
    messages = []
    token_auth = _lists_middleware([settings.SERVER_MIDDLEWARE], "TokenAuth")
    peers = (lookup(settings.SERVER_OPTIONS, "TokenAuth") or {}).get("peers")
    if token_auth and peers and not settings.TLS_REQUIRE_CLIENT_CERT:
        messages.append(warning(
            "resilience.W033", "SERVER_OPTIONS.TokenAuth.peers",
            "lists mTLS identities, but TLS_REQUIRE_CLIENT_CERT is false, so clients are "
            "never asked for a certificate and no peer can match",
            "set TLS_REQUIRE_CLIENT_CERT = true with TLS_CLIENT_CA_FILE, or remove 'peers'",
        ))
    if not deploy:
        return messages
    server_tls = server_tls_enabled(settings)
    if not server_tls and _binds_beyond_loopback(settings.SERVER_ADDRESS):
        messages.append(warning(
            "resilience.W030", "SERVER_ADDRESS",
            f"'{settings.SERVER_ADDRESS}' accepts connections beyond this machine, without "
            f"TLS: calls, and any tokens in them, cross the network in plaintext",
            "set TLS_CERT_FILE and TLS_KEY_FILE (in settings/.secrets.toml), or bind to "
            "127.0.0.1 behind a proxy that terminates TLS",
        ))
    if server_tls and not settings.TLS_REQUIRE_CLIENT_CERT and not token_auth:
        messages.append(warning(
            "resilience.W031", "SERVER_MIDDLEWARE",
            "the server uses TLS but authenticates nobody: client certificates are not "
            "required and TokenAuth is not in SERVER_MIDDLEWARE, so anyone who reaches "
            "the port may call every method",
            "add 'resilience.middleware.TokenAuth' to SERVER_MIDDLEWARE, or require client "
            "certificates (TLS_REQUIRE_CLIENT_CERT = true with TLS_CLIENT_CA_FILE)",
        ))
    client_chains = [settings.CLIENT_MIDDLEWARE, *settings.CLIENT_METHOD_MIDDLEWARE.values()]
    if _lists_middleware(client_chains, "BearerToken") and not client_tls_enabled(settings):
        messages.append(warning(
            "resilience.W032", "CLIENT_MIDDLEWARE",
            "BearerToken sends its token, but channels connect without TLS, so the token "
            "crosses the network in plaintext",
            "set CLIENT_TLS_CA_FILE (or CLIENT_TLS = true to trust the system's CAs)",
        ))
    return messages


def security_checks(
    settings: Settings, sides: Iterable[str] = ("server", "client"), *, deploy: bool = False
) -> list[CheckMessage]:
    """TLS and authentication checks for the given sides, errors first; ``deploy`` adds
    the deployment warnings (``check --deploy``, and always in production)."""
    messages = [m for side in sides for m in _tls_problems(settings, side)]
    messages += _auth_problems(settings, deploy)
    return sorted(with_origins(unique(messages), settings), key=lambda m: not m.is_error)
