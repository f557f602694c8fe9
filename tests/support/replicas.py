"""Client replicas in processes of their own (multiprocessing, spawn): each has its own
resilient channel, in sync or asyncio mode, and makes one Get per request from the test."""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator, Sequence
from typing import Any

START_TIMEOUT_S = 60.0


def _client_worker(conn: Any, mode: str, values: dict[str, Any], address: str) -> None:
    """Child process: answer each key sent with (status name, details) of one Get."""
    import grpc

    from apps.cache.protos import cache_pb2
    from tests.support.servers import client, make_settings

    try:
        stub_context = client(make_settings(**values), address, mode=mode)  # type: ignore[arg-type]
        stub = stub_context.__enter__()
    except BaseException as exc:
        conn.send(("error", repr(exc)))
        raise
    conn.send(("ready", ""))
    try:
        while conn.poll(START_TIMEOUT_S * 5):
            key = conn.recv()
            if key is None:
                break
            try:
                stub.Get(cache_pb2.GetReq(key=key), timeout=2.0)
                conn.send(("OK", ""))
            except grpc.RpcError as exc:
                conn.send((exc.code().name, exc.details()))
    except EOFError:
        pass
    finally:
        stub_context.__exit__(None, None, None)


class Replica:
    """One client process: ``get(key)`` makes one Get there and returns (status, details)."""

    def __init__(self, conn: Any, proc: Any) -> None:
        self.conn = conn
        self.proc = proc

    def get(self, key: str = "k", timeout: float = 10.0) -> tuple[str, str]:
        self.conn.send(key)
        if not self.conn.poll(timeout):
            raise RuntimeError("client replica did not answer")
        status, details = self.conn.recv()
        return status, details


@contextlib.contextmanager
def client_replicas(modes: Sequence[str], values: dict[str, Any], address: str
                    ) -> Iterator[list[Replica]]:
    """One client process per mode ("sync" or "aio"), all started at once, all with the
    settings ``values``, all calling ``address``."""
    ctx = multiprocessing.get_context("spawn")
    replicas = []
    try:
        for mode in modes:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_client_worker, args=(child, mode, values, address),
                               daemon=True)
            proc.start()
            child.close()
            replicas.append(Replica(parent, proc))
        for replica in replicas:
            if not replica.conn.poll(START_TIMEOUT_S):
                raise RuntimeError("client replica did not start")
            status, detail = replica.conn.recv()
            if status != "ready":
                raise RuntimeError(f"client replica failed to start: {detail}")
        yield replicas
    finally:
        for replica in replicas:
            with contextlib.suppress(OSError):
                replica.conn.send(None)
        for replica in replicas:
            replica.proc.join(10)
            if replica.proc.is_alive():
                replica.proc.kill()
                replica.proc.join(5)
            replica.conn.close()
