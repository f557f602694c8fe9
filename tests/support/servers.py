"""Start real servers on ephemeral loopback ports, with settings built in code."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from apps.cache.protos import cache_pb2, cache_pb2_grpc
from resilience.apps.config import AppConfig, Service
from resilience.apps.registry import Apps
from resilience.conf.settings import Settings
from resilience.transport.aio_client import AioResilientChannel, aio_connect
from resilience.transport.aio_serving import AioServer
from resilience.transport.client import ResilientChannel, connect
from resilience.transport.serving import Server


def make_settings(env: str = "testing", **values: Any) -> Settings:
    """Settings from keyword arguments, over the documented defaults."""
    return Settings(values, env=env, path=Path("<test>"))


def scripted_apps(servicer: Any) -> Apps:
    """An app list whose one service is ``servicer`` behind the cache proto, for the sync
    server and the asyncio one (which needs an async servicer)."""
    config = AppConfig()
    config.services = (  # type: ignore[misc]
        Service(
            descriptor=cache_pb2.DESCRIPTOR.services_by_name["CacheService"],
            add_to_server=cache_pb2_grpc.add_CacheServiceServicer_to_server,
            stub=cache_pb2_grpc.CacheServiceStub,
            servicer=lambda settings: servicer,
            async_servicer=lambda settings: servicer,
        ),
    )
    return Apps([config])


@contextlib.contextmanager
def running_server(settings: Settings, servicer: Any, port: int = 0) -> Iterator[Server]:
    """A started server on 127.0.0.1 (an ephemeral port unless ``port``), stopped after."""
    server = Server(settings, scripted_apps(servicer), f"127.0.0.1:{port}")
    server.start()
    try:
        yield server
    finally:
        server.stop(grace=0)


@contextlib.contextmanager
def client(settings: Settings, address: str) -> Iterator[cache_pb2_grpc.CacheServiceStub]:
    """A CacheService stub on a resilient channel to ``address``; the channel is on ``.channel``."""
    channel: ResilientChannel = connect(address, settings)
    stub = cache_pb2_grpc.CacheServiceStub(channel)
    stub.channel = channel  # type: ignore[attr-defined]
    try:
        yield stub
    finally:
        channel.close()


@contextlib.asynccontextmanager
async def running_aio_server(
    settings: Settings, servicer: Any, port: int = 0
) -> AsyncIterator[AioServer]:
    """``running_server`` for the asyncio server; ``servicer`` must be async."""
    server = AioServer(settings, scripted_apps(servicer), f"127.0.0.1:{port}")
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=0)


@contextlib.asynccontextmanager
async def aio_client(
    settings: Settings, address: str
) -> AsyncIterator[cache_pb2_grpc.CacheServiceStub]:
    """``client`` on an asyncio channel: ``await stub.Get(...)``; the channel is on ``.channel``."""
    channel: AioResilientChannel = aio_connect(address, settings)
    stub = cache_pb2_grpc.CacheServiceStub(channel)
    stub.channel = channel  # type: ignore[attr-defined]
    try:
        yield stub
    finally:
        await channel.close()
