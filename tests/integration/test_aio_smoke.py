"""Asyncio mode end to end: grpc.aio servers and clients, each other's sync twins, and
``runserver --asyncio`` / ``runclient --asyncio`` as real processes."""

from __future__ import annotations

import asyncio
import signal
import textwrap
from pathlib import Path

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from apps.cache.protos import cache_pb2
from apps.cache.servicer import AsyncCacheServicer, CacheServicer
from resilience.conf.validation import run_checks
from resilience.core.errors import ImproperlyConfigured
from resilience.transport.aio_serving import AioServer
from tests.integration.test_runserver import GRACE, runclient, runserver
from tests.support.scripted import ScriptedServicer
from tests.support.servers import (
    aio_client,
    client,
    make_settings,
    running_aio_server,
    running_server,
    scripted_apps,
)

pytestmark = pytest.mark.timeout(60)

GET = "cache.CacheService/Get"
CLIENT_CHAIN = ["Retry", "Timeout", "CircuitBreaker"]
SERVER_STACK = ["RequestLogging", "ConcurrencyLimit"]
ITEMS = {f"k{n}": f"v{n}".encode() for n in range(5)}


def names(chain: list[object]) -> list[str]:
    return [type(m).__name__ for m in chain]


def test_store_get_dump_through_default_chains() -> None:
    settings = make_settings()

    async def body() -> None:
        async with running_aio_server(settings, AsyncCacheServicer(settings)) as server, \
                aio_client(settings, server.address) as stub:
            for key, value in ITEMS.items():
                await stub.Store(cache_pb2.StoreReq(key=key, value=value))
            assert (await stub.Get(cache_pb2.GetReq(key="k3"))).value == b"v3"
            dumped = {item.key: item.val async for item in stub.Dump(cache_pb2.DumpReq())}
            assert dumped == ITEMS
            assert names(stub.channel.middleware[GET]) == CLIENT_CHAIN
            assert names(server.interceptor.middleware[GET]) == SERVER_STACK

    asyncio.run(body())


@pytest.mark.parametrize(("key", "code", "details"), [
    ("missing", grpc.StatusCode.NOT_FOUND, "key 'missing' not found"),
    ("", grpc.StatusCode.INVALID_ARGUMENT, "key must not be empty"),
])
def test_servicer_status_reaches_the_client(key: str, code: grpc.StatusCode, details: str
                                            ) -> None:
    settings = make_settings()

    async def body() -> None:
        async with running_aio_server(settings, AsyncCacheServicer(settings)) as server, \
                aio_client(settings, server.address) as stub:
            with pytest.raises(grpc.RpcError) as info:
                await stub.Get(cache_pb2.GetReq(key=key))
            assert info.value.code() == code
            assert info.value.details() == details

    asyncio.run(body())


def test_health_and_reflection() -> None:
    settings = make_settings()

    async def body() -> None:
        async with running_aio_server(settings, AsyncCacheServicer(settings)) as server, \
                grpc.aio.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "cache.CacheService"):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service),
                                           timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            replies = [r async for r in reflection.ServerReflectionInfo(iter([request]),
                                                                         timeout=5)]
            listed = {s.name for s in replies[0].list_services_response.service}
            assert {"cache.CacheService", "grpc.health.v1.Health"} <= listed

    asyncio.run(body())


def test_sync_client_to_aio_server() -> None:
    settings = make_settings()

    def calls(address: str) -> None:
        with client(settings, address) as stub:
            stub.Store(cache_pb2.StoreReq(key="k", value=b"v"))
            assert stub.Get(cache_pb2.GetReq(key="k")).value == b"v"
            assert [item.key for item in stub.Dump(cache_pb2.DumpReq())] == ["k"]
            with pytest.raises(grpc.RpcError) as info:
                stub.Get(cache_pb2.GetReq(key="missing"))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND

    async def body() -> None:
        async with running_aio_server(settings, AsyncCacheServicer(settings)) as server:
            # The sync client blocks: off the loop, which the server needs.
            await asyncio.to_thread(calls, server.address)

    asyncio.run(body())


def test_aio_client_to_sync_server() -> None:
    settings = make_settings()

    async def body(address: str) -> None:
        async with aio_client(settings, address) as stub:
            await stub.Store(cache_pb2.StoreReq(key="k", value=b"v"))
            assert (await stub.Get(cache_pb2.GetReq(key="k"))).value == b"v"
            assert [item.key async for item in stub.Dump(cache_pb2.DumpReq())] == ["k"]
            with pytest.raises(grpc.RpcError) as info:
                await stub.Get(cache_pb2.GetReq(key="missing"))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND

    with running_server(settings, CacheServicer(settings)) as server:
        asyncio.run(body(server.address))


def test_sync_servicer_is_refused_at_startup() -> None:
    async def body() -> None:
        with pytest.raises(ImproperlyConfigured, match=f"{GET} must be a coroutine function"):
            AioServer(make_settings(),
                      scripted_apps(ScriptedServicer(), async_servicer=ScriptedServicer()),
                      "127.0.0.1:0")

    asyncio.run(body())


def test_check_reports_a_service_without_async_servicer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = tmp_path / "syncapp"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "apps.py").write_text(textwrap.dedent("""
        from apps.cache.protos import cache_pb2, cache_pb2_grpc
        from apps.cache.servicer import CacheServicer
        from resilience.apps.config import AppConfig, Service

        class SyncOnlyConfig(AppConfig):
            name = "syncapp"
            services = (Service(
                descriptor=cache_pb2.DESCRIPTOR.services_by_name["CacheService"],
                add_to_server=cache_pb2_grpc.add_CacheServiceServicer_to_server,
                stub=cache_pb2_grpc.CacheServiceStub,
                servicer=CacheServicer,
            ),)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    for asyncio_on, expected in ((False, []), (True, ["resilience.E010"])):
        settings = make_settings(INSTALLED_APPS=["syncapp"], ASYNCIO=asyncio_on)
        _, messages = run_checks(settings)
        assert [m.id for m in messages if m.is_error] == expected, messages
    assert "async servicer" in next(m.hint for m in messages if m.id == "resilience.E010")


def test_runserver_and_runclient_asyncio() -> None:
    with runserver("--asyncio") as server:
        stored = runclient(server.address, "--asyncio", "store", "k", "v")
        assert stored.returncode == 0, stored.stderr
        assert stored.stdout.strip() == "stored k"
        got = runclient(server.address, "get", "k", "--asyncio")
        assert got.returncode == 0, got.stderr
        assert got.stdout == "v\n"
        dumped = runclient(server.address, "--asyncio", "dump")
        assert dumped.returncode == 0, dumped.stderr
        assert "k\tv" in dumped.stdout.splitlines()
        missing = runclient(server.address, "--asyncio", "get", "missing")
        assert missing.returncode not in (0, None)
        assert "NOT_FOUND: key 'missing' not found" in missing.stderr
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=GRACE + 10) == 0, server.stderr()
        assert "Traceback" not in server.stderr()
