"""``manage.py runserver``: serve every installed app through SERVER_MIDDLEWARE."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from resilience.core.errors import ImproperlyConfigured
from resilience.management.base import BaseCommand, CommandError
from resilience.transport.serving import Server


class Command(BaseCommand):
    help = "Serve the installed apps (with health and reflection) until SIGTERM or SIGINT."
    requires_checks = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("address", nargs="?", help="HOST:PORT (default: SERVER_ADDRESS)")

    def handle(self, **options: Any) -> int:
        assert self.apps is not None
        address = options["address"] or self.settings.SERVER_ADDRESS
        try:
            server = Server(self.settings, self.apps, address)
        except (ImproperlyConfigured, RuntimeError) as exc:
            raise CommandError(f"cannot start the server: {exc}") from None
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        server.start()
        self.write(f"serving {', '.join(self.apps.service_names())} on {server.address} "
                   f"(environment '{self.settings.env}'); Ctrl-C to stop")
        self.stdout.flush()
        stop.wait()
        server.stop()
        return 0
