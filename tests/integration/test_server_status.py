"""The server answers exactly as grpcio does without a stack, and its middleware record the
status the client received: on the sync and the asyncio server, through the framework's
servers and through the plain interceptors.

Each case runs against a plain grpcio server of the same kind (no stack) for the status a
client gets there, then against the stacked server, whose client must get the same and
whose Metrics and RequestLogging must record that status: a method left to the generated
base class, ``set_code`` with a return or a raise, an abort, an exception, a unary call
past its deadline or cancelled, and response streams ended by the client's deadline, by
its cancel, by an abort, by an exception or by ``set_code``. The streams that end by
deadline or cancel do it once while the servicer waits between messages (asyncio cancels
it there) and once while grpc waits to write (the servicer floods the stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc import _server
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from apps.cache.protos import cache_pb2, cache_pb2_grpc
from resilience.core.errors import DEADLINE_SLACK, cancelled_status, ended_status
from resilience.interceptors import aio_server_interceptor, server_interceptor
from tests.support.plain import plain_grpc_server
from tests.support.servers import make_settings, running_server

pytestmark = pytest.mark.timeout(60)

STACK = ["resilience.middleware.Metrics", "resilience.middleware.RequestLogging"]
FLOOD_ITEM = b"x" * 65536
Ended = tuple[str, str]  # the client's (code name, details)


# --- servicers: Store is left to the generated base class ----------------------------------


class Servicer(cache_pb2_grpc.CacheServiceServicer):
    """Get and Dump do what the key (or the ``mode`` metadata) says."""

    def Get(self, request: cache_pb2.GetReq, context: grpc.ServicerContext) -> Any:
        key = request.key
        if key.startswith("set_code"):
            context.set_code(grpc.StatusCode.NOT_FOUND)
            context.set_details("set on the context")
            if key == "set_code_raise":
                raise ValueError("after set_code")
        elif key == "abort":
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "aborted")
        elif key == "raise":
            raise ValueError("boom")
        elif key == "sleep":
            while context.is_active():
                time.sleep(0.005)
        return cache_pb2.GetResp(value=b"v")

    def Dump(self, request: cache_pb2.DumpReq, context: grpc.ServicerContext) -> Iterator[Any]:
        mode = dict(context.invocation_metadata()).get("mode", "")
        for n in range(100_000):
            yield cache_pb2.DumpItem(key=str(n), val=FLOOD_ITEM if mode == "flood" else b"")
            if mode == "abort":
                context.abort(grpc.StatusCode.PERMISSION_DENIED, "aborted")
            elif mode == "raise":
                raise ValueError("boom")
            elif mode == "set_code":
                context.set_code(grpc.StatusCode.NOT_FOUND)
                context.set_details("set on the context")
                return
            elif mode != "flood":
                time.sleep(0.01)


class AsyncServicer(cache_pb2_grpc.CacheServiceServicer):
    """``Servicer`` for grpc.aio."""

    async def Get(self, request: cache_pb2.GetReq, context: grpc.aio.ServicerContext) -> Any:
        key = request.key
        if key.startswith("set_code"):
            context.set_code(grpc.StatusCode.NOT_FOUND)
            context.set_details("set on the context")
            if key == "set_code_raise":
                raise ValueError("after set_code")
        elif key == "abort":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "aborted")
        elif key == "raise":
            raise ValueError("boom")
        elif key == "sleep":
            await asyncio.sleep(30)
        return cache_pb2.GetResp(value=b"v")

    async def Dump(self, request: cache_pb2.DumpReq, context: grpc.aio.ServicerContext
                   ) -> AsyncIterator[Any]:
        mode = dict(context.invocation_metadata()).get("mode", "")
        for n in range(100_000):
            yield cache_pb2.DumpItem(key=str(n), val=FLOOD_ITEM if mode == "flood" else b"")
            if mode == "abort":
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "aborted")
            elif mode == "raise":
                raise ValueError("boom")
            elif mode == "set_code":
                context.set_code(grpc.StatusCode.NOT_FOUND)
                context.set_details("set on the context")
                return
            elif mode != "flood":
                await asyncio.sleep(0.01)


# --- servers -------------------------------------------------------------------------------


def servicer_for(mode: str) -> Any:
    return Servicer() if mode == "sync" else AsyncServicer()


def grpc_server(mode: str, interceptors: list[Any], servicer: Any = None
                ) -> contextlib.AbstractContextManager[str]:
    """A plain ``grpc.server`` or ``grpc.aio.server`` with ``interceptors``; its address."""
    servicer = servicer_for(mode) if servicer is None else servicer
    return plain_grpc_server(
        mode, lambda: interceptors,
        lambda server: cache_pb2_grpc.add_CacheServiceServicer_to_server(servicer, server),
    )


@contextlib.contextmanager
def stacked_server(mode: str, kind: str, servicer: Any = None) -> Iterator[str]:
    """The stack on the framework's server, or as a plain interceptor; its address."""
    settings = make_settings(SERVER_MIDDLEWARE=STACK)
    servicer = servicer_for(mode) if servicer is None else servicer
    if kind == "framework":
        with running_server(settings, servicer, mode=mode) as server:  # type: ignore[arg-type]
            yield server.address
        return
    interceptor = server_interceptor(settings) if mode == "sync" else aio_server_interceptor(
        settings)
    with grpc_server(mode, [interceptor], servicer) as address:
        yield address


@contextlib.contextmanager
def stub_for(address: str) -> Iterator[cache_pb2_grpc.CacheServiceStub]:
    with grpc.insecure_channel(address) as channel:
        yield cache_pb2_grpc.CacheServiceStub(channel)


@pytest.fixture(scope="module", params=["sync", "aio"])
def mode(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def plain(mode: str) -> Iterator[cache_pb2_grpc.CacheServiceStub]:
    """A client of the plain grpcio server of this mode: what the stack must match."""
    with grpc_server(mode, []) as address, stub_for(address) as stub:
        yield stub


@pytest.fixture(scope="module", params=["framework", "interceptor"])
def stacked(mode: str, request: pytest.FixtureRequest
            ) -> Iterator[cache_pb2_grpc.CacheServiceStub]:
    with stacked_server(mode, request.param) as address, stub_for(address) as stub:
        yield stub


# --- the cases -----------------------------------------------------------------------------


def ended(fn: Callable[[], Any]) -> Ended:
    try:
        fn()
    except grpc.RpcError as exc:
        return exc.code().name, exc.details()
    return "OK", ""


def get(key: str, timeout: float = 10) -> Callable[[Any], Ended]:
    return lambda stub: ended(lambda: stub.Get(cache_pb2.GetReq(key=key), timeout=timeout))


def get_cancelled(stub: Any) -> Ended:
    """A Get cancelled while its servicer waits."""
    call = stub.Get.future(cache_pb2.GetReq(key="sleep"), timeout=10)
    time.sleep(0.3)  # the servicer has started
    call.cancel()
    return call.code().name, call.details()


def dump(mode: str, timeout: float = 10) -> Callable[[Any], Ended]:
    metadata = (("mode", mode),)
    return lambda stub: ended(
        lambda: list(stub.Dump(cache_pb2.DumpReq(), timeout=timeout, metadata=metadata)))


def dump_cancelled(mode: str) -> Callable[[Any], Ended]:
    def run(stub: Any) -> Ended:
        responses = stub.Dump(cache_pb2.DumpReq(), timeout=10, metadata=(("mode", mode),))
        next(responses)
        responses.cancel()
        return ended(lambda: list(responses))

    return run


def unimplemented(stub: Any) -> Ended:
    return ended(lambda: stub.Store(cache_pb2.StoreReq(key="k", value=b"v"), timeout=10))


CASES: dict[str, tuple[str, Callable[[Any], Ended], str]] = {
    # name: (method, call, the code the client gets)
    "base-class method": ("Store", unimplemented, "UNIMPLEMENTED"),
    "set_code, return": ("Get", get("set_code"), "NOT_FOUND"),
    "set_code, raise": ("Get", get("set_code_raise"), "NOT_FOUND"),
    "abort": ("Get", get("abort"), "PERMISSION_DENIED"),
    "exception": ("Get", get("raise"), "UNKNOWN"),
    "deadline": ("Get", get("sleep", timeout=0.3), "DEADLINE_EXCEEDED"),
    "cancel": ("Get", get_cancelled, "CANCELLED"),
    "stream deadline": ("Dump", dump("", timeout=0.3), "DEADLINE_EXCEEDED"),
    "stream deadline, writing": ("Dump", dump("flood", timeout=0.3), "DEADLINE_EXCEEDED"),
    "stream cancel": ("Dump", dump_cancelled(""), "CANCELLED"),
    "stream cancel, writing": ("Dump", dump_cancelled("flood"), "CANCELLED"),
    "stream abort": ("Dump", dump("abort"), "PERMISSION_DENIED"),
    "stream exception": ("Dump", dump("raise"), "UNKNOWN"),
    "stream set_code": ("Dump", dump("set_code"), "NOT_FOUND"),
}


def handled(method: str) -> dict[str, float]:
    """grpc_server_handled_total of ``method``, by code."""
    grpc_type = "server_stream" if method == "Dump" else "unary"
    counts = {}
    for code in grpc.StatusCode:
        labels = {"grpc_type": grpc_type, "grpc_service": "cache.CacheService",
                  "grpc_method": method, "grpc_code": code.name}
        counts[code.name] = REGISTRY.get_sample_value("grpc_server_handled_total", labels) or 0
    return counts


def recorded(method: str, before: dict[str, float]) -> dict[str, float]:
    """What was counted since ``before``, once the server has counted one call."""
    deadline = time.monotonic() + 10
    while True:
        grown = {code: n - before[code] for code, n in handled(method).items()
                 if n != before[code]}
        if grown or time.monotonic() > deadline:
            return grown
        time.sleep(0.01)


@pytest.mark.parametrize("case", CASES)
def test_the_client_gets_grpcios_status_and_the_stack_records_it(
    case: str, plain: Any, stacked: Any
) -> None:
    method, run, code = CASES[case]
    expected = run(plain)
    assert expected[0] == code
    before = handled(method)
    with capture_logs() as logs:
        got = run(stacked)
        counted = recorded(method, before)  # Metrics, outermost, counts after the log line
    if code in ("DEADLINE_EXCEEDED", "CANCELLED"):
        # The client ends these calls itself, with details that depend on the timing.
        assert got[0] == expected[0]
    else:
        assert got == expected
    assert counted == {code: 1}
    assert [(line["code"], line["method"]) for line in logs if line["event"] == "rpc"] == [
        (code, f"cache.CacheService/{method}")
    ]


@pytest.mark.parametrize("kind", ["framework", "interceptor"])
def test_a_servicer_of_base_class_methods_only(mode: str, kind: str) -> None:
    """The generated base class alone: streaming methods answer UNIMPLEMENTED too."""
    bare = cache_pb2_grpc.CacheServiceServicer()
    run = dump("")
    with grpc_server(mode, [], bare) as address, stub_for(address) as stub:
        expected = run(stub)
    before = handled("Dump")
    with stacked_server(mode, kind, bare) as address, stub_for(address) as stub, \
            capture_logs() as logs:
        assert run(stub) == expected
        assert recorded("Dump", before) == {"UNIMPLEMENTED": 1}
    assert expected[0] == "UNIMPLEMENTED"
    assert [line["code"] for line in logs if line["event"] == "rpc"] == ["UNIMPLEMENTED"]


# --- what the sync path reads of grpc ------------------------------------------------------


def test_the_sync_server_state_the_stack_reads() -> None:
    """The sync terminal reads grpc's per-call state directly, to spare the happy path
    the frames of ``code()`` and ``is_active()``: pin the names it reads."""
    state = _server._RPCState()
    context = _server._Context(None, state, None)  # type: ignore[arg-type]
    assert context._state is state
    assert state.code is None
    assert state.client is not _server._CANCELLED
    context.set_code(grpc.StatusCode.NOT_FOUND)
    assert state.code is grpc.StatusCode.NOT_FOUND


def test_a_client_gone_near_its_deadline_ran_out_of_time() -> None:
    """Its cancellation can reach the server a little before the server's own deadline."""
    now = time.monotonic()
    cancelled = asyncio.CancelledError()
    assert cancelled_status(None) is grpc.StatusCode.CANCELLED
    assert cancelled_status(now + 10) is grpc.StatusCode.CANCELLED
    assert cancelled_status(now + DEADLINE_SLACK / 2) is grpc.StatusCode.DEADLINE_EXCEEDED
    assert ended_status(cancelled, now - 1) is grpc.StatusCode.DEADLINE_EXCEEDED
    assert ended_status(cancelled) is grpc.StatusCode.CANCELLED
    assert ended_status(GeneratorExit(), now - 1) is grpc.StatusCode.CANCELLED  # closed early
    assert ended_status(ValueError()) is grpc.StatusCode.UNKNOWN
