"""``manage.py genproto [APP] [--check]``: regenerate apps' gRPC stubs from their protos."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from resilience.core.errors import ImproperlyConfigured
from resilience.management.base import BaseCommand, CommandError
from resilience.protos import app_location, app_protos, generate, out_of_date


class Command(BaseCommand):
    help = "Regenerate apps' *_pb2.py, *_pb2.pyi, *_pb2_grpc.py from protos/; --check compares."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("app", nargs="?",
                            help="one app of INSTALLED_APPS, by dotted path or label "
                                 "(default: all)")
        parser.add_argument("--check", action="store_true",
                            help="write nothing; exit 1 if regenerating would change a file "
                                 "(for CI)")

    def handle(self, **options: Any) -> int:
        stale: list[Path] = []
        for app in self._apps(options["app"]):
            try:
                package, root = app_location(app)
                protos = app_protos(package)
                if options["check"]:
                    stale += [path.relative_to(root) for path in out_of_date(protos, root)]
                    continue
                generate(protos, root)
            except ImproperlyConfigured as exc:
                raise CommandError(f"genproto {app}: {exc}") from None
            for proto in protos:
                self.write(f"generated stubs for {proto.relative_to(root)}")
        if stale:
            raise CommandError(
                "generated code is out of date: "
                f"{', '.join(str(path) for path in stale)}; run 'manage.py genproto' and "
                f"commit the result"
            )
        if options["check"]:
            self.write("genproto --check: the generated code is up to date")
        return 0

    def _apps(self, wanted: str | None) -> tuple[str, ...]:
        apps = self.settings.INSTALLED_APPS
        if wanted is None:
            return apps
        matches = [app for app in apps if wanted in (app, app.rpartition(".")[2])]
        if not matches:
            raise CommandError(
                f"'{wanted}' is not in INSTALLED_APPS: {', '.join(apps) or 'none'}"
            )
        if len(matches) > 1:
            raise CommandError(
                f"'{wanted}' is the label of {', '.join(matches)}; name one by its dotted path"
            )
        return (matches[0],)
