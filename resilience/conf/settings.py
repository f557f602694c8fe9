"""Load one environment of a settings file with dynaconf, over the documented defaults."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from dynaconf import Dynaconf

from resilience.checks import ENVVAR_PREFIX
from resilience.conf.global_settings import GlobalSettings
from resilience.core.errors import ImproperlyConfigured
from resilience.core.options import build_options
from resilience.core.spelling import closest

ENV_VAR = "RESILIENCE_ENV"
SETTINGS_VAR = "RESILIENCE_SETTINGS"
DEFAULT_ENV = "development"
DEFAULT_FILE = Path("settings") / "settings.toml"
# dynaconf reads every RESILIENCE_* variable as a setting; these two choose the file and
# the environment instead.
_SWITCHES = frozenset({"ENV", "SETTINGS"})
SECRETS_FILE = ".secrets.toml"
#: dynaconf's merge markers. Over a table (or list) that exists they are consumed; over
#: nothing dynaconf leaves them in the value, which then fails as a table of tables.
_MERGE_MARKERS = frozenset({"dynaconf_merge", "dynaconf_merge_unique"})
#: Sections of a settings file that are not environments.
_SHARED_SECTIONS = frozenset({"default", "global"})


class Settings:
    """The active settings: ``GlobalSettings`` fields as attributes, app settings by ``get``.

    ``problems`` holds every value that failed validation (as ``(setting, message)``); the
    defaults stand in for those values so that checks can go on and report everything.
    ``sections`` are the file's top-level section names, for check to catch a misspelled
    ``[default]``.
    """

    sections: tuple[str, ...] = ()

    def __init__(self, raw: dict[str, Any], *, env: str, path: Path,
                 origins: dict[tuple[str, ...], str] | None = None,
                 secrets: dict[str, Any] | None = None,
                 environments: tuple[str, ...] = ()) -> None:
        self.env = env
        self.path = path
        #: Where a value came from when not from the settings file: the key path
        #: (upper-case) -> "RESILIENCE_X__Y" or the secrets file's path (see ``origin``).
        self.origins = origins or {}
        #: The secrets file's sections as read, and the settings file's environments,
        #: so that check can name secrets that no environment reads.
        self.secrets = secrets or {}
        self.environments = environments
        self.raw = {k.upper(): v for k, v in raw.items() if k.upper() not in _SWITCHES}
        self.problems: list[tuple[str, str]] = []
        good = {}
        for key, value in self.raw.items():
            if key not in GlobalSettings.__dataclass_fields__:
                continue
            _, problems = build_options(GlobalSettings, {key: value}, "setting")
            self.problems.extend((key, message) for message in problems)
            if not problems:
                good[key] = value
        core, _ = build_options(GlobalSettings, good, "setting")
        assert core is not None, "values valid one by one are valid together"
        self.core = core

    def __getattr__(self, name: str) -> Any:
        if name.isupper() and name in GlobalSettings.__dataclass_fields__:
            return getattr(self.core, name)
        raise AttributeError(name)

    def get(self, key: str, default: Any = None) -> Any:
        key = key.upper()
        if key in GlobalSettings.__dataclass_fields__:
            return getattr(self.core, key)
        return self.raw.get(key, default)

    def origin(self, path: tuple[str, ...], mentions: str = "") -> str | None:
        """Where the value at ``path`` (a setting, then keys within it) came from, if not
        from the settings file: an environment variable's name, or the secrets file.

        An origin that sets a part of the value (one option of a table) counts only if
        ``mentions`` (the message) names that part, as "'max_attempts'" for instance.
        """
        wanted = tuple(key.upper() for key in path)
        found = None
        for keys, source in self.origins.items():
            if keys[:len(wanted)] == wanted[:len(keys)]:
                if len(keys) > len(wanted) and (
                        f"'{keys[len(wanted)].lower()}'" not in mentions.lower()):
                    continue
                # The environment variable wins over the secrets file, as in dynaconf.
                if found is None or source.startswith(ENVVAR_PREFIX):
                    found = source
        return found


def settings_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The settings file: the argument, else $RESILIENCE_SETTINGS, else settings/settings.toml."""
    return Path(path or os.environ.get(SETTINGS_VAR) or DEFAULT_FILE)


def load_settings(
    path: str | os.PathLike[str] | None = None, env: str | None = None
) -> Settings:
    """Read ``env`` (default $RESILIENCE_ENV, else development) of the settings file.

    Raises ImproperlyConfigured for a missing or unreadable file and an unknown environment;
    value problems are collected on the returned object instead, for ``check`` to list.
    """
    file = settings_path(path)
    env = (env or os.environ.get(ENV_VAR) or DEFAULT_ENV).lower()
    if not file.is_file():
        raise ImproperlyConfigured(
            f"settings file '{file}' does not exist; point {SETTINGS_VAR} or --settings at "
            f"a settings.toml"
        )
    try:
        sections = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ImproperlyConfigured(f"settings file '{file}' is not valid TOML: {exc}") from None
    environments = sorted(k.lower() for k in sections if k.lower() not in _SHARED_SECTIONS)
    if env not in environments:
        near = closest(env, environments)
        misspelt = f" (is [{near}] a misspelling of it?)" if near else ""
        raise ImproperlyConfigured(
            f"environment '{env}' (from --env or {ENV_VAR}) has no [{env}] section in {file}"
            f"{misspelt}; choose one of: {', '.join(environments)}"
        )
    secrets_file = file.with_name(SECRETS_FILE)
    secrets: dict[str, Any] = {}
    if secrets_file.is_file():
        try:
            secrets = tomllib.loads(secrets_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            # The decoder's message gives the line, never the text there: a secret.
            raise ImproperlyConfigured(
                f"secrets file '{secrets_file}' is not valid TOML: {exc}") from None
    # Absolute paths: dynaconf looks for a relative one next to the invoked script and in
    # its parents before the working directory, so `resilience-admin check --settings
    # settings/settings.toml` would read the file of the checkout holding the venv.
    dynaconf = Dynaconf(
        envvar_prefix="RESILIENCE",
        settings_files=[str(file.resolve())],
        secrets=str(secrets_file.resolve()) if secrets_file.is_file() else None,
        environments=True,
        env=env,
        merge_enabled=False,
    )
    try:
        raw = dynaconf.as_dict()
    except Exception as exc:
        raise ImproperlyConfigured(f"settings file '{file}' could not be read: {exc}") from None
    origins = _secret_origins(secrets, env, secrets_file) | _envvar_origins()
    settings = Settings(_without_merge_markers(raw), env=env, path=file, origins=origins,
                        secrets=secrets, environments=tuple(environments))
    settings.sections = tuple(sections)
    return settings


def _without_merge_markers(value: Any) -> Any:
    """``value`` without the ``dynaconf_merge`` markers dynaconf left in it.

    dynaconf consumes a marker when there is a table to merge into; when [default] has no
    such table (the documented .secrets.toml recipe, with no SERVER_OPTIONS in [default]) it
    keeps the marker as a key, and the whole table failed as E001 (TokenAuth's tokens then
    empty). Merging into nothing gives the table itself: drop the marker.
    """
    if isinstance(value, dict):
        return {k: _without_merge_markers(v) for k, v in value.items()
                if str(k).lower() not in _MERGE_MARKERS}
    if isinstance(value, list):
        return [_without_merge_markers(v) for v in value
                if not (isinstance(v, str) and v.lower() in _MERGE_MARKERS)]
    return value


def _key_paths(table: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The key path of every value in a TOML table, upper-case: its leaves (and empty
    tables), not the tables that hold them, which the settings file may share."""
    paths = []
    for key, value in table.items():
        path = (*prefix, str(key).upper())
        if isinstance(value, dict) and value:
            paths += _key_paths(value, path)
        elif str(key).lower() not in _MERGE_MARKERS:
            paths.append(path)
    return paths


def _secret_origins(secrets: dict[str, Any], env: str, file: Path) -> dict[tuple[str, ...], str]:
    """Key paths the secrets file sets for ``env`` (its [default], [ENV] and [global])."""
    origins: dict[tuple[str, ...], str] = {}
    for section, table in secrets.items():
        if section.lower() in {"default", "global", env} and isinstance(table, dict):
            origins.update(dict.fromkeys(_key_paths(table), str(file)))
    return origins


def _envvar_origins() -> dict[tuple[str, ...], str]:
    """Key paths set by RESILIENCE_* variables: RESILIENCE_CLIENT_OPTIONS__TIMEOUT__SECONDS
    sets ("CLIENT_OPTIONS", "TIMEOUT", "SECONDS")."""
    origins = {}
    for name in os.environ:
        if not name.startswith(ENVVAR_PREFIX) or name[len(ENVVAR_PREFIX):] in _SWITCHES:
            continue
        keys = tuple(key.upper() for key in name[len(ENVVAR_PREFIX):].split("__") if key)
        if keys:
            origins[keys] = name
    return origins
