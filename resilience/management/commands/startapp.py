"""``manage.py startapp NAME``: a new app with an example service, ready to serve and call.

Run from the project root (the folder with ``manage.py`` and ``apps/``). The app is
rendered from ``resilience/conf/app_template`` into ``apps/NAME/``, its stubs are generated,
and ``"apps.NAME"`` is added to ``[default]``'s INSTALLED_APPS when the settings file writes
that list plainly; otherwise the command prints the line to add. If the stubs cannot be
generated (no grpcio-tools), nothing is left behind and the command exits 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

from resilience.conf.settings import settings_path
from resilience.core.errors import ImproperlyConfigured
from resilience.management.base import BaseCommand, CommandError
from resilience.management.commands.startproject import TEMPLATES, check_name, render_tree
from resilience.protos import app_protos, generate

# `INSTALLED_APPS = [...]` at the start of a line, the list holding no `]` of its own.
INSTALLED_APPS = re.compile(r"^INSTALLED_APPS[ \t]*=[ \t]*\[(?P<items>[^\]#]*)\][ \t]*$", re.M)
SECTION = re.compile(r"^[ \t]*\[", re.M)


def add_installed_app(path: Path, entry: str) -> str:
    """Add ``entry`` to ``[default]``'s INSTALLED_APPS in the file at ``path``, when it is a
    plain list of strings with no comments in it; rewrite nothing else. Returns what was
    done, or the line to add by hand."""
    by_hand = f'add "{entry}" to INSTALLED_APPS in [default] of {path}'
    try:
        text = path.read_text(encoding="utf-8")
        before = tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError):
        return f"{by_hand}: INSTALLED_APPS = [..., \"{entry}\"]"
    current = before.get("default", {}).get("INSTALLED_APPS")
    line = f"INSTALLED_APPS = {json.dumps([*(current or []), entry])}"
    if isinstance(current, list) and entry in current:
        return f'"{entry}" is in INSTALLED_APPS already'
    header = re.search(r"^\[default\][ \t]*(#.*)?$", text, re.M)
    if header is None or not isinstance(current, list):
        return f"{by_hand}: {line}"
    end = SECTION.search(text, header.end())
    section = slice(header.end(), end.start() if end else len(text))
    found = INSTALLED_APPS.search(text[section])
    if found is None:
        return f"{by_hand}: {line}"
    items = [*current, entry]
    if "\n" in found["items"]:
        listed = "".join(f"    {json.dumps(item)},\n" for item in items)
        replacement = f"INSTALLED_APPS = [\n{listed}]"
    else:
        replacement = line
    start = section.start + found.start()
    edited = text[:start] + replacement + text[section.start + found.end():]
    try:
        after = tomllib.loads(edited)
    except tomllib.TOMLDecodeError:
        return f"{by_hand}: {line}"
    if after != {**before, "default": {**before["default"], "INSTALLED_APPS": items}}:
        return f"{by_hand}: {line}"
    path.write_text(edited, encoding="utf-8")
    overriding = sorted(
        env for env, values in after.items()
        if env != "default" and isinstance(values, dict) and "INSTALLED_APPS" in values
    )
    note = (f"; [{'], ['.join(overriding)}] set INSTALLED_APPS too: add it there as well"
            if overriding else "")
    return f'added "{entry}" to INSTALLED_APPS in [default] of {path}{note}'


def listed_apps(path: Path) -> list[str]:
    """Every INSTALLED_APPS entry of every environment of a settings file, if it reads."""
    try:
        sections = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return []
    return [
        app
        for values in sections.values()
        if isinstance(values, dict) and isinstance(values.get("INSTALLED_APPS"), list)
        for app in values["INSTALLED_APPS"]
        if isinstance(app, str)
    ]


class Command(BaseCommand):
    help = "Create apps/NAME: a proto with an example service, its stubs, servicers, a test."
    requires_settings = False

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name", help="the app's name, a Python identifier such as 'orders'")

    def handle(self, **options: Any) -> int:
        name = options["name"]
        check_name(name, "app")
        root = Path.cwd()
        apps = root / "apps"
        if not (apps / "__init__.py").is_file():
            raise CommandError(
                f"no apps/ package in {root}; run startapp from the project root (the folder "
                f"with manage.py and apps/), or create one with resilience-admin startproject"
            )
        if (apps / name).exists():
            raise CommandError(f"apps/{name} already exists; choose another name")
        if importlib.util.find_spec(name) is not None:
            raise CommandError(f"'{name}' clashes with the Python module '{name}'; "
                               f"choose another name")
        settings = settings_path(options.get("settings"))
        if clash := [app for app in listed_apps(settings) if app.rpartition(".")[2] == name]:
            raise CommandError(
                f"INSTALLED_APPS in {settings} already has an app named '{name}' "
                f"({clash[0]}), whose proto package would clash; choose another name"
            )
        camel = "".join(word[:1].upper() + word[1:] for word in name.split("_"))
        app = apps / name
        render_tree(TEMPLATES / "app_template", app,
                    {"app_name": name, "camel_name": camel, "service": f"{camel}Service"})
        try:
            generate(app_protos(app), root)
        except BaseException as exc:
            # An app without its stubs cannot be imported, so installing it would break
            # every command: leave nothing behind, and let startapp be run again.
            shutil.rmtree(app, ignore_errors=True)
            if isinstance(exc, ImproperlyConfigured):
                raise CommandError(
                    f"stubs not generated ({exc}); apps/{name} was not created and "
                    f"INSTALLED_APPS is unchanged: run 'python manage.py startapp {name}' "
                    f"again once that is fixed"
                ) from None
            raise
        self.write(f"created apps/{name} with {name}.{camel}Service (Echo and Repeat)")
        self.write(f"generated its stubs in apps/{name}/protos")
        self.write(add_installed_app(settings, f"apps.{name}"))
        self.write(f"try: python manage.py runserver, then python manage.py call_{name} echo hi;"
                   f" test: pytest apps/{name}/tests.py")
        return 0
