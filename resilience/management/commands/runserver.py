"""``manage.py runserver``: serve every installed app through SERVER_MIDDLEWARE."""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading
from typing import Any, TypeVar

from resilience.conf.addresses import bind_address_problem
from resilience.core.errors import ImproperlyConfigured
from resilience.management.base import BaseCommand, CommandError, add_asyncio_option
from resilience.transport.aio_serving import AioServer
from resilience.transport.exposition import MetricsEndpoint, serve_metrics
from resilience.transport.serving import Server

SIGNALS = (signal.SIGTERM, signal.SIGINT)
S = TypeVar("S", Server, AioServer)


class Command(BaseCommand):
    help = "Serve the installed apps (with health and reflection) until SIGTERM or SIGINT."
    requires_checks = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("address", nargs="?", help="HOST:PORT (default: SERVER_ADDRESS)")
        add_asyncio_option(parser)

    def handle(self, **options: Any) -> int:
        self.refuse_insecure("server")  # plaintext refused, or TLS settings that cannot work
        address = options["address"] or self.settings.SERVER_ADDRESS
        if options["address"] and (problem := bind_address_problem(address)):
            # SERVER_ADDRESS is checked with the settings; the argument the same way.
            raise CommandError(f"runserver's HOST:PORT is {address!r}; {problem}")
        source = "runserver's HOST:PORT" if options["address"] else "SERVER_ADDRESS"
        metrics = self._serve_metrics()
        try:
            if self.settings.ASYNCIO:
                asyncio.run(self._serve_async(address, source))
            else:
                self._serve(address, source)
        finally:
            if metrics is not None:
                metrics.stop()
        return 0

    def _serve_metrics(self) -> MetricsEndpoint | None:
        """Serve /metrics at METRICS_SERVER_ADDRESS, unless METRICS_ENABLED is false."""
        if not self.settings.METRICS_ENABLED:
            return None
        try:
            endpoint = serve_metrics(self.settings.METRICS_SERVER_ADDRESS)
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from None
        self.write(f"metrics at {endpoint.url}")
        return endpoint

    def _serve(self, address: str, source: str) -> None:
        server = self._build(Server, address, source)
        stop = threading.Event()
        for signum in SIGNALS:
            signal.signal(signum, lambda *_: stop.set())
        server.start()
        self._announce(server.address)
        stop.wait()
        server.stop()

    async def _serve_async(self, address: str, source: str) -> None:
        server = self._build(AioServer, address, source)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in SIGNALS:
            loop.add_signal_handler(signum, stop.set)
        await server.start()
        self._announce(server.address)
        await stop.wait()
        await server.stop()
        # grpc.aio cancels the calls still running when the grace period ends, but does not
        # wait for them; let them wind down, or asyncio.run's teardown reports each one.
        if calls := asyncio.all_tasks() - {asyncio.current_task()}:
            await asyncio.wait(calls, timeout=1.0)

    def _build(self, server_class: type[S], address: str, source: str) -> S:
        assert self.apps is not None
        try:
            return server_class(self.settings, self.apps, address, source)
        except (ImproperlyConfigured, RuntimeError) as exc:
            raise CommandError(f"cannot start the server: {exc}") from None

    def _announce(self, address: str) -> None:
        assert self.apps is not None
        self.write(f"serving {', '.join(self.apps.service_names())} on {address} "
                   f"(environment '{self.settings.env}'); Ctrl-C to stop")
        self.stdout.flush()
