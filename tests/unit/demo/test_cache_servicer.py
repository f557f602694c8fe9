"""The cache app: its store, its validation, and its servicer behind a real gRPC server."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from apps.cache.apps import CacheConfig
from apps.cache.protos import cache_pb2, cache_pb2_grpc
from apps.cache.servicer import CacheServicer, key_problem, shown_key, value_problem
from apps.cache.storage import MemoryStore
from resilience.core.errors import ImproperlyConfigured
from resilience.protos import app_protos, generate
from tests.support.processes import ROOT as REPO

PROTOS = REPO / "apps" / "cache" / "protos"
GENERATED = ("cache_pb2.py", "cache_pb2.pyi", "cache_pb2_grpc.py")


class Settings(dict):
    """Stands in for the dynaconf settings: only ``.get(key, default)`` is used."""


# --- MemoryStore ---------------------------------------------------------------------------


def test_store_get_put_len() -> None:
    store = MemoryStore()
    assert store.get("a") is None
    assert len(store) == 0
    store.put("a", b"1")
    store.put("a", b"2")
    assert store.get("a") == b"2"
    assert len(store) == 1


def test_store_items_is_a_snapshot() -> None:
    store = MemoryStore()
    store.put("a", b"1")
    snapshot = store.items()
    store.put("b", b"2")
    assert snapshot == [("a", b"1")]


def test_store_is_thread_safe() -> None:
    store = MemoryStore()
    threads_n, per_thread = 8, 500
    start = threading.Barrier(threads_n)

    def fill(t: int) -> None:
        start.wait()
        for i in range(per_thread):
            store.put(f"{t}-{i}", str(i).encode())

    threads = [threading.Thread(target=fill, args=(t,)) for t in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store) == threads_n * per_thread
    assert all(
        store.get(f"{t}-{i}") == str(i).encode()
        for t in range(threads_n)
        for i in range(per_thread)
    )


# --- validation ----------------------------------------------------------------------------


def test_key_problem() -> None:
    assert key_problem("k", 4) is None
    assert key_problem("", 4) == "key must not be empty"
    assert key_problem("abcd", 4) is None
    assert "5 bytes; the limit is 4 (CACHE_MAX_KEY_BYTES)" in (key_problem("abcde", 4) or "")
    # The limit is in UTF-8 bytes, not characters: "é" is two bytes.
    assert key_problem("éé", 4) is None
    assert key_problem("ééé", 4) is not None


def test_value_problem_never_echoes_the_value() -> None:
    assert value_problem(b"x" * 10, 10) is None
    problem = value_problem(b"secret-" * 3, 10)
    assert problem == "value is 21 bytes; the limit is 10 (CACHE_MAX_VALUE_BYTES)"


def test_long_keys_are_cut_short_in_messages() -> None:
    assert shown_key("k" * 64) == "k" * 64
    assert shown_key("k" * 200) == "k" * 64 + "..."


def test_servicer_reads_limits_from_settings() -> None:
    servicer = CacheServicer(Settings(CACHE_MAX_VALUE_BYTES=7))
    assert servicer.max_value_bytes == 7
    assert servicer.max_key_bytes == 1024


def test_check_reports_bad_limits() -> None:
    config = CacheConfig()
    assert config.check(Settings()) == []
    messages = config.check(Settings(CACHE_MAX_VALUE_BYTES=-1, CACHE_MAX_KEY_BYTES="big"))
    assert [(m.id, m.setting, m.msg, m.is_error) for m in messages] == [
        ("cache.E001", "CACHE_MAX_VALUE_BYTES", "is -1; expected a whole number > 0", True),
        ("cache.E001", "CACHE_MAX_KEY_BYTES", "is 'big'; expected a whole number > 0", True),
    ]
    assert config.check(Settings(CACHE_MAX_KEY_BYTES=True)) != []


def test_service_declaration() -> None:
    (service,) = CacheConfig.services
    assert service.full_name == "cache.CacheService"
    assert [name for name, _ in service.methods()] == [
        "cache.CacheService/Get",
        "cache.CacheService/Store",
        "cache.CacheService/Dump",
    ]


# --- the servicer behind a real server -----------------------------------------------------


@pytest.fixture
def stub() -> Iterator[cache_pb2_grpc.CacheServiceStub]:
    server = grpc.server(ThreadPoolExecutor(4))
    settings = Settings(CACHE_MAX_VALUE_BYTES=16, CACHE_MAX_KEY_BYTES=8)
    cache_pb2_grpc.add_CacheServiceServicer_to_server(CacheServicer(settings), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield cache_pb2_grpc.CacheServiceStub(channel)
    finally:
        channel.close()
        server.stop(0)


def test_store_then_get(stub: cache_pb2_grpc.CacheServiceStub) -> None:
    assert stub.Store(cache_pb2.StoreReq(key="k", value=b"v"), timeout=5) == cache_pb2.StoreResp()
    assert stub.Get(cache_pb2.GetReq(key="k"), timeout=5).value == b"v"


def test_dump_streams_every_item(stub: cache_pb2_grpc.CacheServiceStub) -> None:
    expected = {f"k{i}": str(i).encode() for i in range(50)}
    for key, value in expected.items():
        stub.Store(cache_pb2.StoreReq(key=key, value=value), timeout=5)
    items = list(stub.Dump(cache_pb2.DumpReq(), timeout=5))
    assert len(items) == 50
    assert {item.key: item.val for item in items} == expected


def test_get_missing_key_is_not_found(stub: cache_pb2_grpc.CacheServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Get(cache_pb2.GetReq(key="nope"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "key 'nope' not found"


@pytest.mark.parametrize(
    "call",
    [
        lambda stub: stub.Get(cache_pb2.GetReq(key=""), timeout=5),
        lambda stub: stub.Store(cache_pb2.StoreReq(key="", value=b"v"), timeout=5),
    ],
    ids=["get", "store"],
)
def test_empty_key_is_invalid(stub: cache_pb2_grpc.CacheServiceStub, call) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call(stub)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "key must not be empty"


def test_long_key_is_invalid(stub: cache_pb2_grpc.CacheServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Store(cache_pb2.StoreReq(key="k" * 9, value=b"v"), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_oversize_value_is_invalid(stub: cache_pb2_grpc.CacheServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Store(cache_pb2.StoreReq(key="k", value=b"s" * 17), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "value is 17 bytes; the limit is 16 (CACHE_MAX_VALUE_BYTES)"
    with pytest.raises(grpc.RpcError) as missing:
        stub.Get(cache_pb2.GetReq(key="k"), timeout=5)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


# --- generated code ------------------------------------------------------------------------


def test_generated_code_is_current(tmp_path: Path) -> None:
    target = tmp_path / "apps" / "cache" / "protos"
    target.mkdir(parents=True)
    shutil.copy(PROTOS / "cache.proto", target / "cache.proto")
    generate(app_protos(tmp_path / "apps" / "cache"), tmp_path)
    for name in GENERATED:
        committed = (PROTOS / name).read_bytes()
        assert (target / name).read_bytes() == committed, (
            f"{name} is stale; regenerate it from cache.proto"
        )
        assert str(REPO).encode() not in committed


def test_generate_reports_protoc_errors(tmp_path: Path) -> None:
    protos = tmp_path / "bad" / "protos"
    protos.mkdir(parents=True)
    (protos / "bad.proto").write_text('syntax = "proto3";\nmessage {}\n')
    with pytest.raises(ImproperlyConfigured, match="Expected message name"):
        generate(app_protos(tmp_path / "bad"), tmp_path)
