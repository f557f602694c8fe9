"""The gRPC interop cases (grpc/grpc's doc/interop-test-descriptions.md) in every pairing
of sync or grpc.aio client with sync or grpc.aio server, in three modes:

- ``grpcio``: plain grpc servers and channels, the control: what grpc itself does.
- ``framework``: the framework's ``Server``/``AioServer`` serving ``tests.interop`` as an
  installed app, and clients from ``connect()``/``aio_connect()``, with the shipped chains.
- ``interceptors``: ``resilience.interceptors`` on a plain grpc server and channel.

The framework should be invisible to code written against grpc, so every case passes in
every mode.

Servers are started once per (mode, server kind) for the whole module; each case gets
channels of its own, so that a breaker or budget one case trips cannot change another.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import tomllib
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import grpc.aio
import pytest

from resilience.apps.registry import load_apps
from resilience.conf.settings import Settings
from resilience.interceptors import (
    CHANNEL_OPTIONS,
    aio_client_interceptors,
    aio_server_interceptor,
    client_interceptors,
    server_interceptor,
)
from resilience.transport.aio_client import aio_connect
from resilience.transport.client import connect
from resilience.transport.serving import Server
from tests.interop.aio_cases import AIO_CASES
from tests.interop.cases import CASES, Stubs
from tests.interop.protos import test_pb2_grpc
from tests.interop.servicer import AsyncInteropServicer, InteropServicer
from tests.support.aio_facade import LoopThread, SyncAioServer
from tests.support.processes import ROOT
from tests.support.servers import make_settings

MODES = ("grpcio", "framework", "interceptors")
KINDS = ("sync", "aio")
#: How long one case may run before it counts as hung (a hang must fail, not block the
#: module); below the 10 s Timeout the settings give TestService, so a hang reads as one.
CASE_SECONDS = 5.0

def _params() -> Iterator[Any]:
    """Every (mode, client, server, case)."""
    for mode in MODES:
        for client in KINDS:
            for server in KINDS:
                for case in CASES:
                    yield pytest.param(mode, client, server, case,
                                       id=f"{mode}-{client}-{server}-{case}")


# --- settings: the shipped chains ------------------------------------------------------------


def interop_settings() -> Settings:
    """The chains and options of settings/settings.toml's [default], for the interop app.

    Timeout's shipped 1 s per call is lengthened for TestService: the cases move large
    messages and hold streams open across round trips, on a loaded machine.
    timeout_on_sleeping_server still gets its own 1 ms, which a Timeout never extends.
    """
    shipped = tomllib.loads((ROOT / "settings" / "settings.toml").read_text("utf-8"))["default"]
    return make_settings(
        INSTALLED_APPS=["tests.interop"],
        SERVER_MIDDLEWARE=shipped["SERVER_MIDDLEWARE"],
        SERVER_OPTIONS=shipped["SERVER_OPTIONS"],
        CLIENT_MIDDLEWARE=shipped["CLIENT_MIDDLEWARE"],
        CLIENT_OPTIONS=shipped["CLIENT_OPTIONS"],
        CLIENT_METHOD_OPTIONS={"grpc.testing.TestService": {"Timeout": {"seconds": 10.0}}},
        IDEMPOTENT_METHODS=["grpc.testing.TestService"],
    )


# --- servers ---------------------------------------------------------------------------------


def _add_services(server: Any, test_servicer: Any) -> int:
    """Register the interop services the generated way; bind an ephemeral port."""
    test_pb2_grpc.add_TestServiceServicer_to_server(test_servicer, server)
    test_pb2_grpc.add_UnimplementedServiceServicer_to_server(
        test_pb2_grpc.UnimplementedServiceServicer(), server
    )
    return server.add_insecure_port("127.0.0.1:0")


@contextlib.contextmanager
def _plain_sync_server(interceptors: list[Any]) -> Iterator[str]:
    server = grpc.server(ThreadPoolExecutor(max_workers=16), interceptors=interceptors)
    port = _add_services(server, InteropServicer())
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0).wait()


@contextlib.contextmanager
def _plain_aio_server(interceptors: Callable[[], list[Any]]) -> Iterator[str]:
    """A grpc.aio server on a loop thread of its own; ``interceptors`` is called there, as
    grpc.aio objects belong to the loop they are made on."""
    loop = LoopThread("interop-aio-server")

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(interceptors=interceptors())
        port = _add_services(server, AsyncInteropServicer())
        await server.start()
        return server, port

    try:
        server, port = loop.run(start())
        try:
            yield f"127.0.0.1:{port}"
        finally:
            loop.run(server.stop(0))
    finally:
        loop.close()


@contextlib.contextmanager
def _framework_sync_server(settings: Settings) -> Iterator[str]:
    server = Server(settings, load_apps(settings.INSTALLED_APPS), "127.0.0.1:0")
    server.start()
    try:
        yield server.address
    finally:
        server.stop(grace=0)


@contextlib.contextmanager
def _framework_aio_server(settings: Settings) -> Iterator[str]:
    server = SyncAioServer(settings, load_apps(settings.INSTALLED_APPS), "127.0.0.1:0")
    try:
        yield server.address
    finally:
        server.stop(grace=0)


def _server(mode: str, kind: str, settings: Settings
            ) -> contextlib.AbstractContextManager[str]:
    if mode == "framework":
        return (_framework_sync_server if kind == "sync" else _framework_aio_server)(settings)
    if kind == "sync":
        return _plain_sync_server([server_interceptor(settings)] if mode == "interceptors"
                                  else [])
    return _plain_aio_server(
        lambda: [aio_server_interceptor(settings)] if mode == "interceptors" else []
    )


class Servers:
    """Each (mode, kind) server, started on first use and kept for the module. A server
    that cannot start fails each case that needs it, rather than the module."""

    def __init__(self, settings: Settings, stack: contextlib.ExitStack) -> None:
        self._settings = settings
        self._stack = stack
        self._lock = threading.Lock()
        self._started: dict[tuple[str, str], str | Exception] = {}

    def address(self, mode: str, kind: str) -> str:
        with self._lock:
            if (mode, kind) not in self._started:
                try:
                    started: str | Exception = self._stack.enter_context(
                        _server(mode, kind, self._settings)
                    )
                except Exception as exc:
                    started = exc
                self._started[(mode, kind)] = started
        started = self._started[(mode, kind)]
        if isinstance(started, Exception):
            raise RuntimeError(f"the {mode} {kind} server did not start: {started!r}") from started
        return started


@pytest.fixture(scope="module")
def settings() -> Settings:
    return interop_settings()


@pytest.fixture(scope="module")
def servers(settings: Settings) -> Iterator[Servers]:
    with contextlib.ExitStack() as stack:
        yield Servers(settings, stack)


@pytest.fixture(scope="module")
def client_loop() -> Iterator[LoopThread]:
    """The event loop every grpc.aio client channel of the module runs on."""
    loop = LoopThread("interop-aio-client")
    try:
        yield loop
    finally:
        loop.close()


# --- clients ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _sync_channel(mode: str, address: str, settings: Settings) -> Iterator[grpc.Channel]:
    if mode == "framework":
        channel: grpc.Channel = connect(address, settings)
    elif mode == "interceptors":
        channel = grpc.intercept_channel(
            grpc.insecure_channel(address, options=CHANNEL_OPTIONS),
            *client_interceptors(settings, target=address),
        )
    else:
        channel = grpc.insecure_channel(address)
    try:
        yield channel
    finally:
        channel.close()


def _aio_channel(mode: str, address: str, settings: Settings) -> grpc.aio.Channel:
    """Called on the client loop, which the channel then belongs to."""
    if mode == "framework":
        return aio_connect(address, settings)
    if mode == "interceptors":
        return grpc.aio.insecure_channel(
            address, options=CHANNEL_OPTIONS,
            interceptors=aio_client_interceptors(settings, target=address),
        )
    return grpc.aio.insecure_channel(address)


def _run_sync(case: Callable[[Stubs], None], stubs: Stubs) -> None:
    """Run ``case`` in a thread of its own, so that a hang fails the case after
    ``CASE_SECONDS`` (the caller then closes the channel, which ends its calls)."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            case(stubs)
        except BaseException as exc:  # re-raised in the test's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="interop-case", daemon=True)
    thread.start()
    thread.join(CASE_SECONDS)
    if thread.is_alive():
        raise TimeoutError(f"the case did not finish in {CASE_SECONDS} s")
    if failure:
        raise failure[0]


async def _run_aio(case: Callable[[Stubs], Awaitable[None]], mode: str, address: str,
                   settings: Settings) -> None:
    channel = _aio_channel(mode, address, settings)
    try:
        await asyncio.wait_for(case(Stubs.on(channel)), CASE_SECONDS)
    finally:
        await channel.close()


@pytest.mark.parametrize(("mode", "client", "server", "case"), list(_params()))
def test_interop(mode: str, client: str, server: str, case: str, settings: Settings,
                 servers: Servers, client_loop: LoopThread) -> None:
    address = servers.address(mode, server)
    if client == "sync":
        with _sync_channel(mode, address, settings) as channel:
            _run_sync(CASES[case], Stubs.on(channel))
    else:
        client_loop.run(_run_aio(AIO_CASES[case], mode, address, settings))
