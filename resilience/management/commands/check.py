"""``manage.py check``: list every configuration problem at once.

As Django's: ``--tag`` runs the checks with that tag (repeatable), ``--list-tags`` prints
the tags, ``--fail-level`` picks the level at or above which it exits 1, and messages
whose ids ``SILENCED_CHECKS`` lists are counted, not printed.
"""

from __future__ import annotations

import argparse
from typing import Any

from resilience.checks import LEVELS, registry
from resilience.conf.validation import run_checks
from resilience.core.spelling import did_you_mean
from resilience.management.base import BaseCommand, CommandError, add_asyncio_option


class Command(BaseCommand):
    help = "Validate the settings and every client and server chain."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--deploy", action="store_true",
                            help="also run the deployment checks (always on in production)")
        parser.add_argument("--tag", "-t", action="append", dest="tags", metavar="TAG",
                            help="run only the checks with this tag (repeatable)")
        parser.add_argument("--list-tags", action="store_true",
                            help="list the tags, with the ids their checks report, and exit")
        parser.add_argument("--fail-level", choices=list(LEVELS), default="ERROR",
                            help="exit 1 when a message is at or above this level "
                                 "(default: ERROR)")
        add_asyncio_option(parser)  # check what runserver --asyncio would refuse

    def handle(self, **options: Any) -> int:
        deploy = bool(options.get("deploy")) or self.settings.env == "production"
        available = registry.tags_available(include_deploy=deploy)
        if options.get("list_tags"):
            for tag in sorted(available):
                ids = sorted({i for c in registry.checks([tag], include_deploy=deploy)
                              for i in c.ids})
                self.write(f"{tag:<12}{' '.join(i.rpartition('.')[2] for i in ids)}")
            return 0
        tags = options.get("tags")
        for tag in tags or ():
            if tag not in available:
                raise CommandError(
                    f"check: no check has the tag '{tag}'{did_you_mean(tag, available)}; "
                    f"tags: {', '.join(sorted(available))}", returncode=2,
                )
        _, found = run_checks(self.settings, tags, include_deploy=deploy, include_silenced=True)
        silenced = set(self.settings.SILENCED_CHECKS)
        messages = [m for m in found if m.id not in silenced]
        self.report(messages)
        level = options.get("fail_level") or "ERROR"
        errors = sum(m.is_error for m in messages)
        where = f"in environment '{self.settings.env}' ({self.settings.path})"
        if len(found) > len(messages):
            where += f"; {len(found) - len(messages)} silenced by SILENCED_CHECKS"
        counts = f"{errors} error(s) and {len(messages) - errors} warning(s)"
        only = f" (tags: {', '.join(sorted(set(tags)))})" if tags else ""
        if any(m.is_serious(level) for m in messages):
            at = "" if level == "ERROR" else f" (--fail-level {level})"
            raise CommandError(f"check{only} found {counts}{at} {where}")
        if errors:
            self.write(f"check{only}: {counts}, none at --fail-level {level} {where}")
        else:
            self.write(f"check{only}: no errors, {len(messages)} warning(s) {where}")
        return 0
