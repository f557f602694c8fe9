"""Fuzzed request bytes against every CacheService method, on the sync and the asyncio
server, each as the framework's server and as a plain grpcio server with the
interceptors, carrying the shipped server stack (settings/settings.toml's [default]
SERVER_MIDDLEWARE and SERVER_OPTIONS) and the real cache servicer.

The bytes go out unserialized on a raw channel: random bytes, valid messages, valid
messages cut short or with a byte changed, and crafted bad ones (strings that are not
UTF-8, reserved wire types, field number 0, varints too long, lengths past the end).
What each must get back is decided by parsing the same bytes here:

- bytes the method's request type refuses get exactly grpcio's sync server's answer:
  INTERNAL, "Exception deserializing request!" (no parser text);
- bytes that parse are a request like any other, and get exactly what the cache answers
  it, computed by a model of the store with the app's own rules: Get is OK (the stored
  value), NOT_FOUND or INVALID_ARGUMENT (an empty or too long key); Store OK or
  INVALID_ARGUMENT; Dump OK with every stored item.

So UNKNOWN never comes back, and no status carries a Python exception's text. Every
call is counted once in grpc_server_handled_total with the code its client got, and
logged once by RequestLogging's ``rpc`` line with that code. The run is bounded (a fixed
number of examples per server, derandomized so CI sees the same ones every time, a
deadline on every call).
"""

from __future__ import annotations

import contextlib
import time
import tomllib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from apps.cache.protos import cache_pb2
from apps.cache.servicer import AsyncCacheServicer, CacheRules, CacheServicer
from resilience.interceptors import aio_server_interceptor, server_interceptor
from resilience.transport.server import UNDECODABLE_DETAILS, StackInterceptor
from tests.integration.test_server_status import grpc_server
from tests.support.processes import ROOT
from tests.support.servers import make_settings, running_server

pytestmark = pytest.mark.timeout(120)

SHIPPED = tomllib.loads(
    (ROOT / "settings" / "settings.toml").read_text("utf-8")
)["default"]
EXAMPLES = 200  # per server; each sends one request to each of the three methods
CALL_TIMEOUT = 5.0
SERVICE = "cache.CacheService"
REQUESTS: dict[str, Any] = {
    "Get": cache_pb2.GetReq, "Store": cache_pb2.StoreReq, "Dump": cache_pb2.DumpReq,
}
GRPC_TYPES = {"Get": "unary", "Store": "unary", "Dump": "server_stream"}


def shipped_settings() -> Any:
    return make_settings(SERVER_MIDDLEWARE=SHIPPED["SERVER_MIDDLEWARE"],
                         SERVER_OPTIONS=SHIPPED["SERVER_OPTIONS"])


# --- the bytes ---------------------------------------------------------------------------

# A few keys often, so that Gets find what Stores put; any text otherwise.
_texts = st.one_of(st.sampled_from(["a", "b", "ключ"]), st.text(max_size=12))
_valid = {
    "Get": _texts.map(lambda k: cache_pb2.GetReq(key=k).SerializeToString()),
    "Store": st.builds(lambda k, v: cache_pb2.StoreReq(key=k, value=v).SerializeToString(),
                       _texts, st.binary(max_size=12)),
    "Dump": st.just(b""),
}
_bad_utf8 = st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xe2\x82", b"\x80"])
_crafted = st.one_of(
    _bad_utf8.map(lambda s: b"\x0a" + bytes([len(s)]) + s),  # field 1, a bad string
    st.sampled_from([
        b"\x0e", b"\x0f\x00",  # wire types 6 and 7 do not exist
        b"\x00\x00",  # field number 0
        b"\x08" + b"\xff" * 10 + b"\x01",  # a varint longer than 10 bytes
        b"\x0a\x7f",  # a length running past the end
        b"\x0b",  # a group start never ended
        b"\x0c",  # a group end never started
    ]),
)


def _mutated(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """A valid message cut short, or with one byte replaced, or with junk after it."""
    def mutate(data: bytes, cut: int, at: int, byte: int, junk: bytes) -> bytes:
        if not data:
            return junk
        choice = cut % 3
        if choice == 0:
            return data[: at % len(data)]
        if choice == 1:
            i = at % len(data)
            return data[:i] + bytes([byte]) + data[i + 1:]
        return data + junk

    return st.builds(mutate, valid, st.integers(0, 2), st.integers(0, 63),
                     st.integers(0, 255), st.binary(min_size=1, max_size=6))


def payloads(method: str) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=40), _valid[method], _mutated(_valid[method]),
                     _crafted)


# --- what each must get back ---------------------------------------------------------------


class CacheModel:
    """The store as the client's calls leave it, and the cache's answer to each request,
    by the app's own rules (``CacheRules``)."""

    def __init__(self, rules: CacheRules) -> None:
        self.rules = rules
        self.data: dict[str, bytes] = {}

    def answer(self, method: str, raw: bytes) -> tuple[str, str, Any]:
        """(code, details, response) the server must give, and what it does to the store."""
        try:
            request = REQUESTS[method].FromString(raw)
        except DecodeError:
            return "INTERNAL", UNDECODABLE_DETAILS, None
        if method == "Dump":
            return "OK", "", sorted(self.data.items())
        value = request.value if method == "Store" else b""
        if (problem := self.rules.problem(request.key, value)) is not None:
            return "INVALID_ARGUMENT", problem, None
        if method == "Store":
            self.data[request.key] = request.value
            return "OK", "", b""
        if request.key not in self.data:
            return "NOT_FOUND", self.rules.not_found(request.key), None
        return "OK", "", self.data[request.key]


def send(channel: grpc.Channel, method: str, raw: bytes) -> tuple[str, str, Any]:
    """(code, details, response) of one raw call: a Get's value, a Dump's sorted items."""
    path = f"/{SERVICE}/{method}"
    try:
        if method == "Dump":
            items = [cache_pb2.DumpItem.FromString(item) for item in channel.unary_stream(
                path, request_serializer=None)(raw, timeout=CALL_TIMEOUT)]
            return "OK", "", sorted((item.key, item.val) for item in items)
        answer = channel.unary_unary(path, request_serializer=None)(raw, timeout=CALL_TIMEOUT)
    except grpc.RpcError as exc:
        return exc.code().name, exc.details() or "", None
    if method == "Get":
        return "OK", "", cache_pb2.GetResp.FromString(answer).value
    return "OK", "", b""


def handled() -> Counter[tuple[str, str]]:
    """grpc_server_handled_total of the cache's methods, by (method, code)."""
    counts: Counter[tuple[str, str]] = Counter()
    for method, grpc_type in GRPC_TYPES.items():
        for code in grpc.StatusCode:
            value = REGISTRY.get_sample_value("grpc_server_handled_total", {
                "grpc_type": grpc_type, "grpc_service": SERVICE, "grpc_method": method,
                "grpc_code": code.name})
            if value:
                counts[method, code.name] = int(value)
    return counts


def counted_since(before: Counter[tuple[str, str]], expected: Counter[tuple[str, str]]
                  ) -> Counter[tuple[str, str]]:
    """What was counted since ``before``, once it is ``expected`` or 5 s have passed."""
    deadline = time.monotonic() + 5
    while True:
        grown = handled()
        grown.subtract(before)
        grown = +grown  # drop zeros
        if grown == expected or time.monotonic() > deadline:
            return grown
        time.sleep(0.02)


@contextlib.contextmanager
def serving(mode: str, kind: str, settings: Any, servicer: Any
            ) -> Iterator[tuple[str, StackInterceptor]]:
    """The framework's server of ``mode``, or a plain grpcio one with the interceptor; its
    address and the interceptor that holds the stacks."""
    if kind == "framework":
        with running_server(settings, servicer, mode=mode) as server:  # type: ignore[arg-type]
            yield server.address, server.interceptor
        return
    interceptor = server_interceptor(settings) if mode == "sync" else \
        aio_server_interceptor(settings)
    with grpc_server(mode, [interceptor], servicer) as address:
        yield address, interceptor  # type: ignore[misc]


SERVERS = [("sync", "framework"), ("aio", "framework"), ("sync", "interceptor"),
           ("aio", "interceptor")]


@pytest.mark.parametrize(("mode", "kind"), SERVERS, ids=["-".join(s) for s in SERVERS])
def test_fuzzed_request_bytes(mode: str, kind: str) -> None:
    settings = shipped_settings()
    servicer = CacheServicer(settings) if mode == "sync" else AsyncCacheServicer(settings)
    model = CacheModel(servicer)
    sent: Counter[tuple[str, str]] = Counter()
    undecodable = 0

    with serving(mode, kind, settings, servicer) as (address, interceptor), \
            grpc.insecure_channel(address) as channel:
        before = handled()
        with capture_logs() as logs:

            @hypothesis_settings(derandomize=True, max_examples=EXAMPLES, deadline=None,
                                 database=None, suppress_health_check=[HealthCheck.too_slow])
            @given(get=payloads("Get"), store=payloads("Store"), dump=payloads("Dump"))
            def exchange(get: bytes, store: bytes, dump: bytes) -> None:
                nonlocal undecodable
                for method, raw in (("Store", store), ("Get", get), ("Dump", dump)):
                    expected = model.answer(method, raw)
                    got = send(channel, method, raw)
                    sent[method, expected[0]] += 1
                    undecodable += expected[1] == UNDECODABLE_DETAILS
                    assert got == expected, (method, raw)

            exchange()
        counted = counted_since(before, sent)
        # The stack each method ran (built on its first call): the shipped one.
        stacks = {method: [type(m).__name__ for m in interceptor.middleware[
            f"{SERVICE}/{method}"]] for method in REQUESTS}

    shipped = [path.rpartition(".")[2] for path in SHIPPED["SERVER_MIDDLEWARE"]]
    assert stacks == dict.fromkeys(REQUESTS, shipped)
    assert sum(sent.values()) >= 3 * EXAMPLES
    assert {code for _, code in sent} <= {"OK", "NOT_FOUND", "INVALID_ARGUMENT", "INTERNAL"}
    # The fuzzing reached both sides: bytes that do not parse and bytes that do.
    assert undecodable >= EXAMPLES // 4
    assert sent["Get", "OK"] and sent["Get", "NOT_FOUND"] and sent["Store", "OK"]
    assert sent["Get", "INVALID_ARGUMENT"] and sent["Dump", "INTERNAL"]
    assert counted == sent
    rpc_lines = Counter((line["method"].rpartition("/")[2], line["code"]) for line in logs
                        if line["event"] == "rpc" and line["side"] == "server")
    assert rpc_lines == sent
    assert sum(line["event"] == "request_undecodable" for line in logs) == undecodable
