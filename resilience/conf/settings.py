"""Load one environment of a settings file with dynaconf, over the documented defaults."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from dynaconf import Dynaconf

from resilience.conf.global_settings import GlobalSettings
from resilience.conf.options import build_options
from resilience.core.errors import ImproperlyConfigured
from resilience.core.spelling import closest

ENV_VAR = "RESILIENCE_ENV"
SETTINGS_VAR = "RESILIENCE_SETTINGS"
DEFAULT_ENV = "development"
DEFAULT_FILE = Path("settings") / "settings.toml"
# dynaconf reads every RESILIENCE_* variable as a setting; these two choose the file and
# the environment instead.
_SWITCHES = frozenset({"ENV", "SETTINGS"})


class Settings:
    """The active settings: ``GlobalSettings`` fields as attributes, app settings by ``get``.

    ``problems`` holds every value that failed validation (as ``(setting, message)``); the
    defaults stand in for those values so that checks can go on and report everything.
    ``sections`` are the file's top-level section names, for check to catch a misspelled
    ``[default]``.
    """

    sections: tuple[str, ...] = ()

    def __init__(self, raw: dict[str, Any], *, env: str, path: Path) -> None:
        self.env = env
        self.path = path
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
    environments = sorted(k.lower() for k in sections if k.lower() not in {"default", "global"})
    if env not in environments:
        near = closest(env, environments)
        misspelt = f" (is [{near}] a misspelling of it?)" if near else ""
        raise ImproperlyConfigured(
            f"environment '{env}' (from --env or {ENV_VAR}) has no [{env}] section in {file}"
            f"{misspelt}; choose one of: {', '.join(environments)}"
        )
    secrets = file.with_name(".secrets.toml")
    dynaconf = Dynaconf(
        envvar_prefix="RESILIENCE",
        settings_files=[str(file)],
        secrets=str(secrets) if secrets.is_file() else None,
        environments=True,
        env=env,
        merge_enabled=False,
    )
    try:
        raw = dynaconf.as_dict()
    except Exception as exc:
        raise ImproperlyConfigured(f"settings file '{file}' could not be read: {exc}") from None
    settings = Settings(raw, env=env, path=file)
    settings.sections = tuple(sections)
    return settings
