"""Assemble a runnable server: app services behind the stack, plus health and reflection."""

from __future__ import annotations

import errno
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from resilience.apps.registry import Apps
from resilience.conf.credentials import server_credentials
from resilience.conf.factory import ChainFactory
from resilience.conf.settings import Settings
from resilience.core.errors import ImproperlyConfigured
from resilience.transport.health import SaturationMonitor, stack_limiters
from resilience.transport.server import ChainInterceptor, StackInterceptor

log = structlog.get_logger(__name__)


# grpcio sets SO_REUSEPORT on a server's sockets by default, so a second server on a
# taken port binds silently and the kernel spreads new connections between the two. Our
# servers turn it off: a taken address is refused when the server is built.
SERVER_OPTIONS = (("grpc.so_reuseport", 0),)


def listen(
    grpc_server: Any, address: str, interceptor: StackInterceptor,
    credentials: grpc.ServerCredentials | None = None, source: str = "SERVER_ADDRESS",
) -> tuple[int, str]:
    """Bind ``address`` (with TLS if ``credentials``); return the port and the address as
    bound. ``source`` names where the address came from, for the error message."""
    try:
        if credentials is None:
            port = grpc_server.add_insecure_port(address)
        else:
            port = grpc_server.add_secure_port(address, credentials)
    except RuntimeError:  # grpcio >= 1.52 raises where older versions returned 0
        port = 0
    if port == 0:
        raise ImproperlyConfigured(
            f"cannot listen on {address} ({source}): {bind_problem(address)}"
        )
    bound = f"{address.rpartition(':')[0]}:{port}"
    # Stacks are built on first call, after binding: give them the bound address, not the
    # requested one (whose port may be 0).
    interceptor.target = bound
    return port, bound


def bind_problem(address: str) -> str:
    """Why ``address`` (HOST:PORT) cannot be bound, found by binding it as grpc does
    (SO_REUSEADDR, no SO_REUSEPORT); grpc itself only says that it failed."""
    host, _, port = address.rpartition(":")
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, int(port), type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (OSError, ValueError) as exc:
        return f"it is not a HOST:PORT that resolves ({exc})"
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return ("the address is already in use (another process, perhaps another "
                            "server, listens there); stop it or choose another address")
                return exc.strerror or str(exc)
    return "grpc could not bind it"


class Server:
    """A grpc server serving every installed app, with graceful, health-aware shutdown."""

    def __init__(self, settings: Settings, apps: Apps, address: str,
                 source: str = "SERVER_ADDRESS") -> None:
        self.settings = settings
        self.interceptor = ChainInterceptor(
            ChainFactory(settings, "server", target=address), set(apps.methods())
        )
        self.grpc_server = grpc.server(
            ThreadPoolExecutor(max_workers=settings.SERVER_MAX_WORKERS),
            interceptors=[self.interceptor],
            options=SERVER_OPTIONS,
        )
        for service in apps.services():
            service.add_to_server(service.servicer(settings), self.grpc_server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        names = apps.service_names()
        for name in ["", *names]:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        reflection.enable_server_reflection(
            [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.grpc_server
        )
        self.port, self.address = listen(
            self.grpc_server, address, self.interceptor, server_credentials(settings), source
        )

    def start(self) -> None:
        self.grpc_server.start()
        if seconds := self.settings.HEALTH_SATURATION_SECONDS:
            self.saturation = SaturationMonitor(seconds, self.limiters, self._report_saturation)
            self.saturation.start()
        log.info("server_started", address=self.address, env=self.settings.env)

    #: The HEALTH_SATURATION_SECONDS monitor, while the server runs with one.
    saturation: SaturationMonitor | None = None

    def limiters(self) -> list[Any]:
        """The server stack's ConcurrencyLimit and AdaptiveLimit instances built so far
        (a method's stack is built on its first call): what the saturation monitor reads."""
        return stack_limiters(self.interceptor.middleware)

    def _report_saturation(self, overloaded: bool) -> None:
        status = health_pb2.HealthCheckResponse
        self.health.set("", status.NOT_SERVING if overloaded else status.SERVING)

    def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING first, so balancers drain, then let in-flight calls finish."""
        grace = self.settings.SERVER_GRACE_PERIOD if grace is None else grace
        if self.saturation is not None:
            self.saturation.stop()
        self.health.enter_graceful_shutdown()
        log.info("server_draining", grace_s=grace)
        self.grpc_server.stop(grace).wait()
        log.info("server_stopped")
