"""Start real servers on ephemeral loopback ports, with settings built in code, in either
mode: ``running_server`` and ``client`` take ``mode="sync"`` or ``mode="aio"``, and in both
the test drives them with sync code (the aio ones through ``tests.support.aio_facade``).
A ``Pairing`` (the ``pairing`` fixture) picks the client's mode and the server's.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from apps.cache.protos import cache_pb2, cache_pb2_grpc
from resilience.apps.config import AppConfig, Service
from resilience.apps.registry import Apps
from resilience.conf.settings import Settings
from resilience.transport.aio_client import AioResilientChannel, aio_connect
from resilience.transport.aio_serving import AioServer
from resilience.transport.client import ResilientChannel, connect
from resilience.transport.serving import Server
from tests.support.aio_facade import SyncAioServer, SyncAioStub
from tests.support.scripted import AsyncScriptedServicer, Script

Mode = Literal["sync", "aio"]
MODES: tuple[Mode, ...] = ("sync", "aio")


def make_settings(env: str = "testing", **values: Any) -> Settings:
    """Settings from keyword arguments, over the documented defaults, with the cache app
    installed unless ``INSTALLED_APPS`` says otherwise."""
    return Settings({"INSTALLED_APPS": ["apps.cache"], **values}, env=env, path=Path("<test>"))


def scripted_apps(servicer: Any, async_servicer: Any = None) -> Apps:
    """An app list whose one service is the cache proto: ``servicer`` on the sync server,
    ``async_servicer`` on the asyncio one. By default the asyncio server gets an
    ``AsyncScriptedServicer`` sharing the books of ``servicer`` if that is a ``Script``
    (a ``ScriptedServicer``), and ``servicer`` itself otherwise (an async servicer)."""
    if async_servicer is None:
        async_servicer = (
            AsyncScriptedServicer(servicer) if isinstance(servicer, Script) else servicer
        )
    config = AppConfig()
    config.services = (  # type: ignore[misc]
        Service(
            descriptor=cache_pb2.DESCRIPTOR.services_by_name["CacheService"],
            add_to_server=cache_pb2_grpc.add_CacheServiceServicer_to_server,
            stub=cache_pb2_grpc.CacheServiceStub,
            servicer=lambda settings: servicer,
            async_servicer=lambda settings: async_servicer,
        ),
    )
    return Apps([config])


@contextlib.contextmanager
def running_server(
    settings: Settings, servicer: Any, mode: Mode = "sync", port: int = 0
) -> Iterator[Server | SyncAioServer]:
    """A started server on 127.0.0.1 (an ephemeral port unless ``port``), stopped after.

    ``mode="aio"`` runs an ``AioServer`` on a loop thread of its own; either way the
    server has ``.address``, ``.port`` and ``.interceptor``.
    """
    address = f"127.0.0.1:{port}"
    apps = scripted_apps(servicer)
    if mode == "aio":
        aio_server = SyncAioServer(settings, apps, address)
        try:
            yield aio_server
        finally:
            aio_server.stop(grace=0)
        return
    server = Server(settings, apps, address)
    server.start()
    try:
        yield server
    finally:
        server.stop(grace=0)


@contextlib.contextmanager
def client(
    settings: Settings, address: str, mode: Mode = "sync", options: Sequence[tuple[str, Any]] = ()
) -> Iterator[Any]:
    """A CacheService stub on a resilient channel to ``address``; the channel is on ``.channel``.

    ``mode="aio"`` gives a ``SyncAioStub``: the same calls, made on a grpc.aio channel whose
    loop runs in a thread of its own; its methods also have ``.future()``.
    """
    if mode == "aio":
        aio_stub = SyncAioStub(settings, address, options)
        try:
            yield aio_stub
        finally:
            aio_stub.close()
        return
    channel: ResilientChannel = connect(address, settings, options=options)
    stub = cache_pb2_grpc.CacheServiceStub(channel)
    stub.channel = channel  # type: ignore[attr-defined]
    try:
        yield stub
    finally:
        channel.close()


@dataclasses.dataclass(frozen=True)
class Pairing:
    """Which client mode talks to which server mode; ``server`` and ``client`` are
    ``running_server`` and ``client`` in those modes."""

    client_mode: Mode
    server_mode: Mode

    @property
    def id(self) -> str:
        return f"{self.client_mode}-{self.server_mode}"

    def server(self, settings: Settings, servicer: Any, port: int = 0
               ) -> contextlib.AbstractContextManager[Any]:
        return running_server(settings, servicer, mode=self.server_mode, port=port)

    def client(self, settings: Settings, address: str, options: Sequence[tuple[str, Any]] = ()
               ) -> contextlib.AbstractContextManager[Any]:
        return client(settings, address, mode=self.client_mode, options=options)


PAIRINGS = tuple(Pairing(c, s) for c in MODES for s in MODES)


@contextlib.asynccontextmanager
async def running_aio_server(
    settings: Settings, servicer: Any, port: int = 0
) -> AsyncIterator[AioServer]:
    """``running_server`` for the asyncio server, on the running loop; ``servicer`` is async
    or a ``ScriptedServicer`` (as in ``scripted_apps``)."""
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
