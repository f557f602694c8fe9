"""``manage.py check``: list every configuration problem at once."""

from __future__ import annotations

import argparse
from typing import Any

from resilience.conf.validation import run_checks, security_checks
from resilience.management.base import BaseCommand, CommandError, add_asyncio_option


class Command(BaseCommand):
    help = "Validate the settings and every client and server chain."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--deploy", action="store_true",
                            help="also run the deployment checks (always on in production)")
        add_asyncio_option(parser)  # check what runserver --asyncio would refuse

    def handle(self, **options: Any) -> int:
        _, messages = run_checks(self.settings)
        deploy = options.get("deploy") or self.settings.env == "production"
        messages = sorted(messages + security_checks(self.settings, deploy=deploy),
                          key=lambda m: not m.is_error)
        self.report(messages)
        errors = sum(m.is_error for m in messages)
        if errors:
            raise CommandError(
                f"check found {errors} error(s) and {len(messages) - errors} warning(s) "
                f"in environment '{self.settings.env}' ({self.settings.path})"
            )
        self.write(
            f"check: no errors, {len(messages)} warning(s) in environment "
            f"'{self.settings.env}' ({self.settings.path})"
        )
        return 0
