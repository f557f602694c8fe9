"""``manage.py bench``: run one of the project's benchmarks, or list them.

Benchmarks are found by convention, as commands are: every module of the project's
top-level ``benchmarks`` package whose name does not start with ``_`` and that defines
``run(*, quick=False, stdout=None)``. The module measures, prints and records its own
figures; this command only finds it and runs it.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from types import ModuleType
from typing import Any

from resilience.management.base import BaseCommand, CommandError

PACKAGE = "benchmarks"


def _package() -> ModuleType:
    try:
        return importlib.import_module(PACKAGE)
    except ModuleNotFoundError as exc:
        if exc.name != PACKAGE:
            raise
        raise CommandError(
            f"no '{PACKAGE}' package to take benchmarks from: run manage.py from the project "
            f"root, where {PACKAGE}/__init__.py lives"
        ) from None


def find_benchmarks() -> dict[str, str]:
    """Benchmark name -> the first line of its module's docstring."""
    package = _package()
    found = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.ispkg or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{PACKAGE}.{info.name}")
        if callable(getattr(module, "run", None)):
            found[info.name] = (module.__doc__ or "").strip().split("\n")[0]
    return found


class Command(BaseCommand):
    help = "Run a benchmark of the benchmarks package, or list them; --quick for a smoke run."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name", nargs="?", help="the benchmark to run; omit to list them")
        parser.add_argument(
            "--quick", action="store_true",
            help="a much shorter run whose figures are rough and not recorded",
        )

    def handle(self, **options: Any) -> int:
        available = find_benchmarks()
        name = options["name"]
        if not name:
            if not available:
                self.write(f"no benchmarks in the {PACKAGE} package")
            for found, summary in sorted(available.items()):
                self.write(f"  {found:<20} {summary}")
            return 0
        if name not in available:
            raise CommandError(
                f"unknown benchmark '{name}'; available: {', '.join(sorted(available)) or 'none'}"
            )
        module = importlib.import_module(f"{PACKAGE}.{name}")
        module.run(quick=options["quick"], stdout=self.stdout)
        return 0
