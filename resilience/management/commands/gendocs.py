"""``manage.py gendocs [--check]``: render the reference tables of docs/ from the code."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from resilience.conf.reference import regenerate
from resilience.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = ("Render the settings and option tables in docs/*.md from their declarations; "
            "--check compares.")
    requires_settings = False

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--docs", default="docs", type=Path,
                            help="the documentation folder (default: docs)")
        parser.add_argument("--check", action="store_true",
                            help="write nothing; exit 1 if a page is out of date (for CI)")

    def handle(self, **options: Any) -> int:
        docs: Path = options["docs"]
        if not docs.is_dir():
            raise CommandError(f"gendocs: {docs} is not a folder; pass --docs PATH")
        stale = []
        for page in sorted(docs.rglob("*.md")):
            text = page.read_text(encoding="utf-8")
            fresh = regenerate(text)
            if fresh == text:
                continue
            if options["check"]:
                stale.append(str(page))
            else:
                page.write_text(fresh, encoding="utf-8")
                self.write(f"regenerated {page}")
        if stale:
            raise CommandError(
                f"the reference is out of date: {', '.join(stale)}; run 'manage.py gendocs' "
                f"and commit the result"
            )
        if options["check"]:
            self.write("gendocs --check: the reference matches the code")
        return 0
