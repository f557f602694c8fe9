"""Assemble a runnable grpc.aio server: async servicers behind the stack, health, reflection."""

from __future__ import annotations

from typing import Any

import grpc.aio
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from resilience.apps.registry import Apps
from resilience.apps.servicers import require_async
from resilience.conf.credentials import server_credentials
from resilience.conf.factory import ChainFactory
from resilience.conf.settings import Settings
from resilience.core.errors import ImproperlyConfigured
from resilience.transport.aio_server import AioChainInterceptor
from resilience.transport.health import AioSaturationMonitor, stack_limiters
from resilience.transport.serving import SERVER_OPTIONS, listen

log = structlog.get_logger(__name__)


class AioServer:
    """A grpc.aio server serving every installed app's ``async_servicer``, with graceful,
    health-aware shutdown. Build it inside the event loop that will run it."""

    def __init__(self, settings: Settings, apps: Apps, address: str,
                 source: str = "SERVER_ADDRESS") -> None:
        self.settings = settings
        self.interceptor = AioChainInterceptor(
            ChainFactory(settings, "server", is_async=True, target=address),
            set(apps.methods()),
        )
        self.grpc_server = grpc.aio.server(interceptors=[self.interceptor],
                                           options=SERVER_OPTIONS)
        for service in apps.services():
            if service.async_servicer is None:
                raise ImproperlyConfigured(
                    f"service {service.full_name} has no async_servicer; the asyncio server "
                    f"needs one (resilience.E010)"
                )
            servicer = service.async_servicer(settings)
            # Fail at startup, not on each method's first call.
            for name, kind in service.methods():
                require_async(name, getattr(servicer, name.rpartition("/")[2]), kind)
            service.add_to_server(servicer, self.grpc_server)
        self.names = apps.service_names()
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        reflection.enable_server_reflection(
            [*self.names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.grpc_server
        )
        self.port, self.address = listen(
            self.grpc_server, address, self.interceptor, server_credentials(settings), source
        )

    async def start(self) -> None:
        for name in self.names:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        await self.grpc_server.start()
        if seconds := self.settings.HEALTH_SATURATION_SECONDS:
            self.saturation = AioSaturationMonitor(
                seconds, self.limiters, self._report_saturation
            )
            self.saturation.start()
        log.info("server_started", address=self.address, env=self.settings.env, asyncio=True)

    #: The HEALTH_SATURATION_SECONDS monitor, while the server runs with one.
    saturation: AioSaturationMonitor | None = None

    def limiters(self) -> list[Any]:
        """The server stack's ConcurrencyLimit and AdaptiveLimit instances built so far
        (a method's stack is built on its first call): what the saturation monitor reads."""
        return stack_limiters(self.interceptor.middleware)

    async def _report_saturation(self, overloaded: bool) -> None:
        status = health_pb2.HealthCheckResponse
        await self.health.set("", status.NOT_SERVING if overloaded else status.SERVING)

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING first, so balancers drain, then let in-flight calls finish."""
        grace = self.settings.SERVER_GRACE_PERIOD if grace is None else grace
        if self.saturation is not None:
            await self.saturation.stop()
        await self.health.enter_graceful_shutdown()
        log.info("server_draining", grace_s=grace)
        await self.grpc_server.stop(grace)
        log.info("server_stopped")
