"""``manage.py genproto [APP]``: regenerate an app's gRPC stubs from its protos."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

from resilience.core.errors import ImproperlyConfigured
from resilience.management.base import BaseCommand, CommandError
from resilience.protos import app_protos, generate


class Command(BaseCommand):
    help = "Regenerate *_pb2.py, *_pb2.pyi and *_pb2_grpc.py from each app's protos/*.proto."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("app", nargs="?", help="one app of INSTALLED_APPS (default: all)")

    def handle(self, **options: Any) -> int:
        apps = self.settings.INSTALLED_APPS
        if options["app"]:
            if options["app"] not in apps:
                raise CommandError(f"'{options['app']}' is not in INSTALLED_APPS: {list(apps)}")
            apps = (options["app"],)
        for app in apps:
            package = Path(importlib.import_module(app).__file__ or "").parent
            root = package.parents[len(app.split(".")) - 1]
            protos = app_protos(package)
            try:
                generate(protos, root)
            except ImproperlyConfigured as exc:
                raise CommandError(f"genproto {app}: {exc}") from None
            for proto in protos:
                self.write(f"generated stubs for {proto.relative_to(root)}")
        return 0
