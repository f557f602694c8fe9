"""A plain grpcio server (no framework server around it) on an ephemeral loopback port,
sync or grpc.aio, for tests of what the plain interceptors do inside grpcio's own servers."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import grpc.aio

from tests.support.aio_facade import LoopThread


@contextlib.contextmanager
def plain_grpc_server(mode: str, interceptors: Callable[[], list[Any]],
                      add: Callable[[Any], None], workers: int = 8) -> Iterator[str]:
    """``grpc.server`` (or ``grpc.aio.server``, on a loop thread of its own) made with
    ``interceptors()`` and given its services by ``add(server)``; yields the address.
    Both callables run where the server is made: on the loop, for grpc.aio."""
    if mode == "sync":
        server = grpc.server(ThreadPoolExecutor(workers), interceptors=interceptors())
        add(server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            yield f"127.0.0.1:{port}"
        finally:
            server.stop(0)
        return
    loop = LoopThread("plain-aio-server")

    async def start() -> tuple[grpc.aio.Server, int]:
        aio = grpc.aio.server(interceptors=interceptors())
        add(aio)
        bound = aio.add_insecure_port("127.0.0.1:0")
        await aio.start()
        return aio, bound

    try:
        aio_server, port = loop.run(start())
        try:
            yield f"127.0.0.1:{port}"
        finally:
            loop.run(aio_server.stop(0))
    finally:
        loop.close()
