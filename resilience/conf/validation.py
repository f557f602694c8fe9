"""Every check of the settings and the chains they describe, for ``manage.py check``.

Each check is registered with its tags and ids (``resilience.checks.register``) and reads
what it needs from one ``CheckContext`` per run, which loads the apps, finds the served
methods and resolves every chain once, for whichever checks ask. ``run_checks`` runs the
registered checks a caller selects; it is the one entry of check, runserver, runclient and
the interceptors, so that they all report, silence and order messages alike.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import ipaddress
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from resilience.apps.config import AppConfig
from resilience.apps.registry import Apps, load_apps
from resilience.apps.servicers import require_async
from resilience.checks import (
    LEVELS,
    OWN_PREFIX,
    CheckMessage,
    Tags,
    error,
    register,
    registry,
    unique,
    unsilenced,
    warning,
)
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
from resilience.core.call import CallKind, Side
from resilience.core.errors import ImproperlyConfigured
from resilience.core.loading import describe_exception
from resilience.core.spelling import closest, edit_distance
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


#: A method name no setting can name: resolving it gives a side's default chain.
ANY_METHOD = "(any method)"
#: What the chains report of the mode (sync or asyncio), under the asyncio tag too.
_MODE_IDS = frozenset({"resilience.E009", "resilience.W004"})


class CheckContext:
    """What checks read, computed once per run for whichever checks ask: the apps, the
    served methods and every chain resolved. Reading the apps (or the methods) also
    reports why they could not be had, the apps' import errors (or PROTO_MODULES'), even
    when the tags selected leave out the check that owns those ids: a check that could
    not look must not pass as one that found nothing."""

    def __init__(self, settings: Settings, sides: Iterable[Side] = ("server", "client")
                 ) -> None:
        self.settings = settings
        #: The sides whose TLS the security checks look at: runserver's, runclient's, both.
        self.sides = tuple(sides)
        self._read_apps = self._read_protos = False

    @functools.cached_property
    def _loaded(self) -> tuple[Apps | None, list[CheckMessage]]:
        """The installed apps (None if any fails to import) and one E007 per app that does."""
        failed = []
        for entry in self.settings.INSTALLED_APPS:  # one at a time, to report every broken app
            try:
                load_apps([entry])
            except ImproperlyConfigured as exc:
                missing = f"no module '{entry}.apps'" in str(exc)
                failed.append(error(
                    "resilience.E007", "INSTALLED_APPS", str(exc),
                    "list importable app packages, such as 'apps.cache'" if missing else
                    f"fix the error in the app's code (the message says where), or remove "
                    f"'{entry}' from INSTALLED_APPS",
                    obj=entry,
                ))
        return (None if failed else load_apps(self.settings.INSTALLED_APPS)), failed

    @property
    def loaded_apps(self) -> Apps | None:
        """The apps, for the caller of run_checks, without reporting anything."""
        return self._loaded[0]

    @property
    def app_problems(self) -> list[CheckMessage]:
        return self._loaded[1]

    @property
    def apps(self) -> Apps | None:
        """The installed apps, or None when one does not import (its E007 is reported)."""
        self._read_apps = True
        return self._loaded[0]

    @functools.cached_property
    def _protos(self) -> tuple[dict[str, CallKind], list[CheckMessage]]:
        return proto_methods(self.settings)

    @property
    def proto_problems(self) -> list[CheckMessage]:
        return self._protos[1]

    @property
    def methods(self) -> dict[str, CallKind] | None:
        """The methods of the installed apps and of PROTO_MODULES; None without the apps,
        since every method name would then look unknown."""
        apps = self.apps
        if apps is None:
            return None
        self._read_protos = True
        return {**self._protos[0], **apps.methods()}

    @property
    def prerequisites(self) -> list[CheckMessage]:
        """Why what the checks read could not be had: reported with the checks' own."""
        return ((self.app_problems if self._read_apps else [])
                + (self.proto_problems if self._read_protos else []))

    @functools.cached_property
    def resolver(self) -> ChainResolver | None:
        """Every chain resolved, each served method's and the default ones (checked even
        before an app serves a method: an empty INSTALLED_APPS, a fresh project); its
        ``problems`` and ``listed`` are the chain checks'. None without the apps."""
        methods = self.methods
        if methods is None:
            return None
        resolver = ChainResolver(self.settings)
        for side in ("server", "client"):
            for method in (*methods, ANY_METHOD):
                resolver.resolve(side, method)
        return resolver


# Settings (resilience.E001, W034).
@register(Tags.settings, ids=("resilience.E001",))
def check_setting_values(ctx: CheckContext) -> list[CheckMessage]:
    """E001: values of the wrong type or out of bounds; their defaults stand in."""
    return _setting_problems(ctx.settings)


@register(Tags.settings, ids=("resilience.W034",))
def check_secrets_file(ctx: CheckContext) -> list[CheckMessage]:
    """W034: secrets in sections no environment reads."""
    return _unread_secrets(ctx.settings)


# Apps (resilience.E007, E010, E074, W002, W050).
@register(Tags.apps, ids=("resilience.E007", "resilience.W002"))
def check_apps(ctx: CheckContext) -> list[CheckMessage]:
    """E007 for an app that does not import, W002 for one that serves nothing."""
    apps = ctx.apps
    return ctx.app_problems + [
        warning("resilience.W002", "INSTALLED_APPS", f"app '{config.name}' declares no services",
                "add Service entries to its AppConfig.services, or remove the app",
                obj=config.name)
        for config in (apps.configs if apps else ())
        if not config.services
    ]


@register(Tags.apps, ids=("resilience.E007",))
def check_app_configs(ctx: CheckContext) -> list[CheckMessage]:
    """Each app's own ``AppConfig.check``, with the ids it chooses (``cache.E001``)."""
    apps = ctx.apps
    configs = apps.configs if apps else ()
    return [m for config in configs for m in _app_check(config, ctx.settings)]


def _app_check(config: AppConfig, settings: Settings) -> list[CheckMessage]:
    """The app's own check; one that raises is reported, not a traceback."""
    try:
        return list(config.check(settings))
    except Exception as exc:
        return [error("resilience.E007", "INSTALLED_APPS",
                      f"app '{config.name}': its check() raised {describe_exception(exc)}",
                      "fix the app's AppConfig.check", obj=config.name)]


@register(Tags.apps, ids=("resilience.W050",))
def check_generated_code(ctx: CheckContext) -> list[CheckMessage]:
    """W050: an app's stubs are older than its protos."""
    messages = []
    for config in (apps.configs if (apps := ctx.apps) else ()):
        app_dir = Path(sys.modules[type(config).__module__].__file__ or "").parent
        messages += [
            warning("resilience.W050", "INSTALLED_APPS",
                    f"app '{config.name}': the code generated from {proto.name} is out of "
                    f"date: {problem}",
                    f"run 'python manage.py genproto {config.name}'", obj=config.name)
            for proto, problem in stale(app_protos(app_dir))
        ]
    return messages


@register(Tags.apps, Tags.asyncio, ids=("resilience.E010", "resilience.E074"))
def check_async_servicers(ctx: CheckContext) -> list[CheckMessage]:
    """Under ASYNCIO, what the asyncio server refuses of the apps' servicers."""
    apps = ctx.apps
    if apps is None or not ctx.settings.ASYNCIO:
        return []
    messages = [
        error("resilience.E010", "INSTALLED_APPS",
              f"app '{config.name}' serves {service.full_name} without an async "
              f"servicer, and ASYNCIO is on",
              "add an async servicer to the app's Service (async_servicer=...), or "
              "turn ASYNCIO off", obj=config.name)
        for config in apps.configs
        for service in config.services
        if service.async_servicer is None
    ]
    return messages + _async_servicer_problems(apps)


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
                f"known methods: {', '.join(sorted(methods)) or 'none'}", obj=key,
            ))
    return messages


def _idempotent_methods(settings: Settings, methods: set[str]) -> list[CheckMessage]:
    """IDEMPOTENT_METHODS must name served methods, as the CLIENT_METHOD_* keys must (a
    typo there silently stops Retry)."""
    services = {service_of(m) for m in methods}
    return [
        error("resilience.E050", "IDEMPOTENT_METHODS",
              f"'{key}' names no method or service of an installed app or of "
              f"PROTO_MODULES{method_suggestion(key, methods)}",
              f"use 'package.Service/Method' or 'package.Service'; known methods: "
              f"{', '.join(sorted(methods)) or 'none'}", obj=key)
        for key in settings.IDEMPOTENT_METHODS
        if key not in methods and key not in services and (methods or not well_formed(key))
    ]


# The chains (resilience.E002-E006, E009, E011, W004).
@register(Tags.middleware, ids=(
    "resilience.E002", "resilience.E003", "resilience.E004", "resilience.E005",
    "resilience.E006", "resilience.E011",
))
def check_chains(ctx: CheckContext) -> list[CheckMessage]:
    """What resolving every chain finds: paths, sides, options, duplicates, Retry with
    Hedging."""
    resolver = ctx.resolver
    return [m for m in resolver.problems if m.id not in _MODE_IDS] if resolver else []


@register(Tags.middleware, Tags.asyncio, ids=tuple(_MODE_IDS))
def check_chain_modes(ctx: CheckContext) -> list[CheckMessage]:
    """E009: middleware that cannot run in the mode; W004: sync-only ones run adapted."""
    resolver = ctx.resolver
    return [m for m in resolver.problems if m.id in _MODE_IDS] if resolver else []


# Names that match nothing (resilience.E008, E050, E070-E079, W001, W003, W070-W079).
@register(Tags.names, ids=("resilience.E070", "resilience.W001", "resilience.E075"))
def check_setting_names(ctx: CheckContext) -> list[CheckMessage]:
    """E070 for a near miss of a setting's name, W001 for other unknown keys, E075 for a
    section that is a near miss of [default] or [global]."""
    return setting_name_problems(ctx.settings, ctx.apps) + section_problems(ctx.settings)


@register(Tags.names, ids=("resilience.E073", "resilience.W071"))
def check_proto_modules(ctx: CheckContext) -> list[CheckMessage]:
    """E073/W071: PROTO_MODULES entries that add no method names to check against."""
    return ctx.proto_problems


@register(Tags.names, ids=("resilience.E071", "resilience.W003", "resilience.E005"))
def check_options_tables(ctx: CheckContext) -> list[CheckMessage]:
    """Options tables that no chain reads (E071 near a middleware's name, W003 else)."""
    resolver = ctx.resolver
    return option_table_problems(ctx.settings, resolver.listed) if resolver else []


@register(Tags.names, ids=(
    "resilience.E008", "resilience.E050", "resilience.E072", "resilience.W070",
    "resilience.W072",
))
def check_method_names(ctx: CheckContext) -> list[CheckMessage]:
    """Method names that name no served method: per-method keys (E008),
    IDEMPOTENT_METHODS (E050), inside options (E072); options aimed at a method whose
    chain lacks their middleware (W070); names that cannot be checked (W072)."""
    methods, resolver = ctx.methods, ctx.resolver
    if methods is None or resolver is None:
        return []
    messages = _method_keys(ctx.settings, set(methods))
    messages += _idempotent_methods(ctx.settings, set(methods))
    messages += option_method_problems(ctx.settings, methods)
    messages += aimed_option_problems(ctx.settings, methods, resolver.listed)
    if not methods:
        messages += unchecked_method_names(ctx.settings, set())
    return messages


@register(Tags.names, ids=("resilience.W073",))
def check_silenced_ids(ctx: CheckContext) -> list[CheckMessage]:
    """W073: a SILENCED_CHECKS entry that is no check's id silences nothing, and the
    message meant goes on printing; ids of an installed app's own checks cannot be known
    and are taken as they are."""
    known = registry.ids()
    apps = ctx.apps
    labels = {config.name.rpartition(".")[2] for config in (apps.configs if apps else ())}
    messages = []
    for entry in ctx.settings.SILENCED_CHECKS:
        label, _, code = entry.partition(".")
        if entry in known or (label in labels and re.fullmatch(r"[DIWEC]\d{3}", code)):
            continue
        near = (f"{OWN_PREFIX}{entry}" if f"{OWN_PREFIX}{entry}" in known else
                _near_id(entry, known) or _near_label(label, code, labels, apps is None))
        mean = f" (did you mean '{near}'?)" if near else ""
        messages.append(warning(
            "resilience.W073", "SILENCED_CHECKS",
            f"'{entry}' is the id of no check, so it silences nothing{mean}",
            "list ids as check prints them: resilience.W070, or an installed app's "
            "own such as cache.E001 (see the README's table of ids)",
            obj=entry,
        ))
    return messages


def _near_id(entry: str, known: Iterable[str]) -> str | None:
    """The known id ``entry`` is a typo of, by the spelling rule: one of the same level
    first, and of ids as near the one sharing the longest start ('resilience.W074' is
    sooner W070's than W004's, all one edit away)."""
    lowered = entry.lower()
    level = entry.rpartition(".")[2][:1]
    same = [k for k in known if k.rpartition(".")[2][:1] == level]
    for pool in (same, list(known)):
        near = [k for k in pool if closest(entry, [k]) is not None]
        if near:
            best = min(edit_distance(lowered, k.lower()) for k in near)
            return min((k for k in near if edit_distance(lowered, k.lower()) == best),
                       key=lambda k: (-_shared_start(lowered, k.lower()), k))
    return None


def _shared_start(a: str, b: str) -> int:
    """How many leading characters ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def _near_label(label: str, code: str, labels: set[str], unknown: bool) -> str | None:
    """'cache.E001' for 'cahce.E001' when an installed app is labelled 'cache'."""
    if unknown or not re.fullmatch(r"[DIWEC]\d{3}", code):
        return None
    match = closest(label, labels)
    return f"{match}.{code}" if match else None


# Shared state (resilience.E040-E049).
@register(Tags.redis, ids=("resilience.E040", "resilience.E041"))
def check_redis(ctx: CheckContext) -> list[CheckMessage]:
    """E040/E041: middleware with storage = 'redis' and no usable REDIS_URL."""
    methods = ctx.methods
    return redis_problems(ctx.settings, methods) if methods is not None else []


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
                 "fix the TLS settings (see docs/how-to/tls-and-auth.md)")


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


def _token_auth(settings: Settings) -> bool:
    return _lists_middleware([settings.SERVER_MIDDLEWARE], "TokenAuth")


@register(Tags.security, ids=(
    "resilience.E030", "resilience.E031", "resilience.E032", "resilience.E033",
    "resilience.E034", "resilience.E035",
))
def check_tls(ctx: CheckContext) -> list[CheckMessage]:
    """TLS of the sides the caller will run: runserver refuses on the server's alone,
    runclient on the client's alone."""
    return [m for side in ctx.sides for m in _tls_problems(ctx.settings, side)]


@register(Tags.security, ids=("resilience.W033",))
def check_token_peers(ctx: CheckContext) -> list[CheckMessage]:
    """W033: TokenAuth peers that mTLS never presents."""
    settings = ctx.settings
    peers = (lookup(settings.SERVER_OPTIONS, "TokenAuth") or {}).get("peers")
    if not (_token_auth(settings) and peers and not settings.TLS_REQUIRE_CLIENT_CERT):
        return []
    return [warning(
        "resilience.W033", "SERVER_OPTIONS.TokenAuth.peers",
        "lists mTLS identities, but TLS_REQUIRE_CLIENT_CERT is false, so clients are "
        "never asked for a certificate and no peer can match",
        "set TLS_REQUIRE_CLIENT_CERT = true with TLS_CLIENT_CA_FILE, or remove 'peers'",
    )]


@register(Tags.security, ids=("resilience.W030", "resilience.W031", "resilience.W032"),
          deploy=True)
def check_deployment(ctx: CheckContext) -> list[CheckMessage]:
    """With --deploy (always in production): servers open beyond loopback without TLS
    (W030), TLS servers anyone may call (W031) and tokens sent in plaintext (W032). Fine
    on a laptop, so not reported there."""
    settings = ctx.settings
    messages = []
    server_tls = server_tls_enabled(settings)
    if not server_tls and _binds_beyond_loopback(settings.SERVER_ADDRESS):
        messages.append(warning(
            "resilience.W030", "SERVER_ADDRESS",
            f"'{settings.SERVER_ADDRESS}' accepts connections beyond this machine, without "
            f"TLS: calls, and any tokens in them, cross the network in plaintext",
            "set TLS_CERT_FILE and TLS_KEY_FILE (in settings/.secrets.toml), or bind to "
            "127.0.0.1 behind a proxy that terminates TLS",
        ))
    if server_tls and not settings.TLS_REQUIRE_CLIENT_CERT and not _token_auth(settings):
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


def run_checks(
    settings: Settings,
    tags: Iterable[str] | None = None,
    *,
    include_deploy: bool = False,
    sides: Iterable[Side] = ("server", "client"),
    include_silenced: bool = False,
) -> tuple[Apps | None, list[CheckMessage]]:
    """Run the registered checks with any of ``tags`` (all for None), the deployment
    checks too with ``include_deploy``, TLS for ``sides``; return the apps (if they
    loaded) and every message, each once, with its origin, the most serious first, less
    those ``SILENCED_CHECKS`` lists unless ``include_silenced``."""
    ctx = CheckContext(settings, sides)
    messages = registry.run(ctx, tags, include_deploy=include_deploy) + ctx.prerequisites
    messages = with_origins(unique(messages), settings)
    if not include_silenced:
        messages = unsilenced(messages, settings.SILENCED_CHECKS)
    messages.sort(key=lambda m: -LEVELS[m.level])
    return ctx.loaded_apps, messages
