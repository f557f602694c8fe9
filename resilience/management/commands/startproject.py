"""``resilience-admin startproject NAME [DIRECTORY]``: a new project to add apps to.

The project is ``manage.py``, ``settings/settings.toml`` with the development, testing and
production environments, and an empty ``apps/`` package, rendered from
``resilience/conf/project_template``. The helpers here render ``startapp``'s template too.
"""

from __future__ import annotations

import argparse
import keyword
import re
from pathlib import Path
from typing import Any

from resilience.management.base import BaseCommand, CommandError

TEMPLATES = Path(__file__).resolve().parents[2] / "conf"
SUFFIX = "-tpl"
PLACEHOLDER = re.compile(r"\{\{ (\w+) \}\}")


def check_name(name: str, what: str) -> None:
    """Refuse a name that cannot be a Python package (and a proto package) name."""
    if not (name.isidentifier() and name.isascii()) or keyword.iskeyword(name):
        raise CommandError(
            f"'{name}' is not a valid {what} name; use letters, digits and underscores, "
            f"starting with a letter, such as 'orders'"
        )


def render_tree(template: Path, target: Path, context: dict[str, str]) -> None:
    """Copy ``template`` to ``target``: ``{{ key }}`` in a file becomes ``context[key]``,
    ``app_name`` (any key ending in ``_name``) in a file's path becomes its value, ``-tpl``
    endings (which keep templates from being imported or linted) are dropped, and a leading
    ``dot-`` becomes ``.``."""
    # One pass each, so that a value containing a key is left alone; only the keys that
    # end in "_name" rename files ("service" would rename servicer.py).
    keys = sorted((key for key in context if key.endswith("_name")), key=len, reverse=True)
    names = re.compile("|".join(map(re.escape, keys)))
    for source in sorted(template.rglob(f"*{SUFFIX}")):
        parts = []
        for part in source.relative_to(template).parts:
            part = names.sub(lambda m: context[m.group()], part)
            parts.append("." + part[4:] if part.startswith("dot-") else part)
        destination = target.joinpath(*parts).with_name(parts[-1].removesuffix(SUFFIX))
        text = PLACEHOLDER.sub(lambda m: context[m.group(1)], source.read_text(encoding="utf-8"))
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_text(text, encoding="utf-8")


class Command(BaseCommand):
    help = "Create a project: manage.py, settings/ with its environments, an empty apps/."
    requires_settings = False

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name", help="the project's name, a Python identifier")
        parser.add_argument("directory", nargs="?",
                            help="where to create it (default: ./NAME); must be empty")

    def handle(self, **options: Any) -> int:
        name = options["name"]
        check_name(name, "project")
        target = Path(options["directory"] or name)
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise CommandError(f"'{target}' already exists and is not an empty directory")
        render_tree(TEMPLATES / "project_template", target, {"project_name": name})
        (target / "manage.py").chmod(0o755)
        self.write(f"created project '{name}' in {target}; next:")
        self.write(f"  cd {target}")
        self.write("  python manage.py startapp NAME     # an app with an example service")
        self.write("  python manage.py check")
        self.write("  python manage.py runserver")
        return 0
