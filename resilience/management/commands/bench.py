"""``manage.py bench``: run one of the project's benchmarks, or list them.

Benchmarks are found by convention, as commands are: every module of the project's
top-level ``benchmarks`` package whose name does not start with ``_`` and that defines
``run(*, quick=False, stdout=None, output=None)``. The module measures, prints and records
its own figures and returns them; this command finds it, runs it, and turns the targets it
returns (``results["targets"]``: name -> ``{"passed": bool, ...}``) into the exit status:
a full run that misses a target exits 1. A quick run's figures are rough (a second of
calls on a shared machine), so its targets are reported as "miss", not enforced; a quick
run fails only if the benchmark itself fails.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from pathlib import Path
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


def missed_targets(results: Any) -> list[str]:
    """The targets a benchmark's results say were missed, in its order (listed sorted)."""
    targets = results.get("targets") if isinstance(results, dict) else None
    return [name for name, target in (targets or {}).items() if not target.get("passed")]


def verdict(results: Any, quick: bool) -> tuple[int, str]:
    """The exit status of a benchmark run and the line that says why ("" when all passed):
    1 if a full run missed a target; a quick run reports its misses and exits 0."""
    missed = missed_targets(results)
    if not missed:
        return 0, ""
    listed = ", ".join(sorted(missed))
    if quick:
        return 0, (f"quick run: {len(missed)} target(s) missed ({listed}), not enforced: "
                   f"quick figures are rough; a full run enforces them")
    return 1, f"{len(missed)} target(s) failed: {listed}"


class Command(BaseCommand):
    help = "Run a benchmark of the benchmarks package, or list them; --quick for a smoke run."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name", nargs="?", help="the benchmark to run; omit to list them")
        parser.add_argument(
            "--quick", action="store_true",
            help="a much shorter run whose figures are rough and not recorded; its targets "
                 "are reported, not enforced",
        )
        parser.add_argument("--output", type=Path, metavar="FILE",
                            help="write the figures (JSON) here; a full run's default is "
                                 "benchmarks/results/NAME.json")

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
        extra = {"output": options["output"]} if options["output"] else {}
        results = module.run(quick=options["quick"], stdout=self.stdout, **extra)
        status, why = verdict(results, options["quick"])
        if status:
            raise CommandError(why, status)
        if why:
            self.write(why)
        return 0
