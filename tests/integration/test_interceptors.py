"""Plain grpc interceptors in a plain grpcio application: ``grpc.server`` plus
``add_CacheServiceServicer_to_server`` plus ``server_interceptor(settings)``, and clients
through ``grpc.intercept_channel`` or grpc.aio's ``interceptors=``, with no manage.py and
no installed apps. Behavioural tests run in the four client and server mode pairings.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from apps.cache.protos import cache_pb2, cache_pb2_grpc
from resilience import ImproperlyConfigured
from resilience.interceptors import (
    CHANNEL_OPTIONS,
    aio_client_interceptors,
    aio_server_interceptor,
    client_interceptors,
    server_interceptor,
)
from resilience.middleware import CircuitBreaker, Retry, Timeout
from tests.support.aio_facade import LoopThread, SyncMethod
from tests.support.plain import plain_grpc_server
from tests.support.scripted import AsyncScriptedServicer, ScriptedServicer
from tests.support.servers import Pairing, make_settings

pytestmark = pytest.mark.timeout(60)

GET = "cache.CacheService/Get"
STORE = "cache.CacheService/Store"
COLLECT = "/test.Echo/Collect"  # stream-unary, raw bytes
ECHO = "/test.Echo/Echo"  # stream-stream, raw bytes


def plain_settings(**values: Any) -> Any:
    """Settings of an application without resilience apps."""
    values.setdefault("INSTALLED_APPS", [])
    values.setdefault("SERVER_MIDDLEWARE", [])
    values.setdefault("CLIENT_MIDDLEWARE", [])
    return make_settings(**values)


# --- a plain grpcio application ------------------------------------------------------------


def _collect(requests: Iterator[bytes], context: Any) -> bytes:
    return b"".join(requests)


def _echo(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
    yield from requests


async def _acollect(requests: AsyncIterator[bytes], context: Any) -> bytes:
    return b"".join([r async for r in requests])


async def _aecho(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


def _echo_service(collect: Any, echo: Any) -> grpc.GenericRpcHandler:
    """A request-streaming service beside the cache, registered the plain grpcio way."""
    return grpc.method_handlers_generic_handler("test.Echo", {
        "Collect": grpc.stream_unary_rpc_method_handler(collect),
        "Echo": grpc.stream_stream_rpc_method_handler(echo),
    })


def plain_server(mode: str, settings: Any, servicer: ScriptedServicer
                 ) -> contextlib.AbstractContextManager[str]:
    """``grpc.server`` (or ``grpc.aio.server``) with the servicer added as generated code
    says and the stack as an interceptor; yields the address."""
    if mode == "sync":
        def add(server: Any) -> None:
            cache_pb2_grpc.add_CacheServiceServicer_to_server(servicer, server)
            server.add_generic_rpc_handlers((_echo_service(_collect, _echo),))

        return plain_grpc_server(mode, lambda: [server_interceptor(settings)], add, 16)

    def aio_add(server: Any) -> None:
        cache_pb2_grpc.add_CacheServiceServicer_to_server(AsyncScriptedServicer(servicer), server)
        server.add_generic_rpc_handlers((_echo_service(_acollect, _aecho),))

    return plain_grpc_server(mode, lambda: [aio_server_interceptor(settings)], aio_add)


class PlainAioStub:
    """A CacheService stub on a grpc.aio channel with the aio interceptors, called from
    sync code; ``raw(kind, method)`` gives a raw-bytes multicallable for the echo service.
    ``interceptors`` are the ones the channel runs."""

    def __init__(self, settings: Any, address: str) -> None:
        self._loop = LoopThread("plain-aio-client")

        async def open_channel() -> Any:
            self.interceptors = aio_client_interceptors(settings, target=address)
            return grpc.aio.insecure_channel(
                address, options=CHANNEL_OPTIONS, interceptors=self.interceptors
            )

        self.channel = self._loop.run(open_channel())
        self._stub = cache_pb2_grpc.CacheServiceStub(self.channel)

    def __getattr__(self, name: str) -> SyncMethod:
        return SyncMethod(getattr(self.__dict__["_stub"], name), self.__dict__["_loop"])

    @property
    def middleware(self) -> dict[str, Any]:
        return self.interceptors[0].middleware  # type: ignore[no-any-return]

    def collect(self, parts: list[bytes]) -> bytes:
        async def run() -> bytes:
            async def requests() -> AsyncIterator[bytes]:
                for part in parts:
                    yield part

            return await self.channel.stream_unary(COLLECT)(requests())  # type: ignore[no-any-return]

        return self._loop.run(run())

    def echo(self, parts: list[bytes]) -> list[bytes]:
        async def run() -> list[bytes]:
            return [r async for r in self.channel.stream_stream(ECHO)(iter(parts))]

        return self._loop.run(run())

    def collect_by_writing(self, parts: list[bytes]) -> bytes:
        async def run() -> bytes:
            call = self.channel.stream_unary(COLLECT)()
            for part in parts:
                await call.write(part)
            await call.done_writing()
            return await call  # type: ignore[no-any-return]

        return self._loop.run(run())

    def close(self) -> None:
        try:
            self._loop.run(self.channel.close())
        finally:
            self._loop.close()


class PlainStub:
    """The sync counterpart of ``PlainAioStub``, on ``grpc.intercept_channel``."""

    def __init__(self, settings: Any, address: str) -> None:
        self.interceptors = client_interceptors(settings, target=address)
        self._raw = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.channel = grpc.intercept_channel(self._raw, *self.interceptors)
        self._stub = cache_pb2_grpc.CacheServiceStub(self.channel)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_stub"], name)

    @property
    def middleware(self) -> dict[str, Any]:
        return self.interceptors[0].middleware

    def collect(self, parts: list[bytes]) -> bytes:
        return self.channel.stream_unary(COLLECT)(iter(parts))  # type: ignore[no-any-return]

    def echo(self, parts: list[bytes]) -> list[bytes]:
        return list(self.channel.stream_stream(ECHO)(iter(parts)))

    def close(self) -> None:
        self.channel.close()


@contextlib.contextmanager
def plain_client(mode: str, settings: Any, address: str) -> Iterator[Any]:
    stub = PlainStub(settings, address) if mode == "sync" else PlainAioStub(settings, address)
    try:
        yield stub
    finally:
        stub.close()


@contextlib.contextmanager
def plain_app(pairing: Pairing, settings: Any, servicer: ScriptedServicer) -> Iterator[Any]:
    with plain_server(pairing.server_mode, settings, servicer) as address, \
            plain_client(pairing.client_mode, settings, address) as stub:
        yield stub


def rpc_error(fn: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


# --- behaviour, in the four pairings -------------------------------------------------------


def test_client_chain_retries_unavailable_get_but_not_not_found(pairing: Pairing) -> None:
    settings = plain_settings(
        CLIENT_MIDDLEWARE=["resilience.middleware.Retry"],
        CLIENT_OPTIONS={"Retry": {"initial_backoff": 0.01, "max_backoff": 0.02}},
    )
    servicer = ScriptedServicer()
    with plain_app(pairing, settings, servicer) as stub:
        response = stub.Get(cache_pb2.GetReq(key="fail=UNAVAILABLE*2"), timeout=10)
        assert response.value == b"fail=UNAVAILABLE*2"
        error = rpc_error(lambda: stub.Get(cache_pb2.GetReq(key="notfound"), timeout=10))
        assert error.code() is grpc.StatusCode.NOT_FOUND
        assert error.details() == "scripted not found"
        [retry] = stub.middleware[GET]
        assert isinstance(retry, Retry)
    # Get is idempotent by its proto, found with no installed app.
    assert servicer.attempts["fail=UNAVAILABLE*2"] == 3
    assert servicer.attempts["notfound"] == 1


def test_a_method_of_its_own_gets_its_own_chain(pairing: Pairing) -> None:
    settings = plain_settings(
        CLIENT_MIDDLEWARE=["resilience.middleware.Timeout"],
        CLIENT_OPTIONS={"Timeout": {"seconds": 5.0}},
        CLIENT_METHOD_MIDDLEWARE={STORE: ["resilience.middleware.Timeout"]},
        CLIENT_METHOD_OPTIONS={STORE: {"Timeout": {"seconds": 0.2}}},
    )
    servicer = ScriptedServicer()
    with plain_app(pairing, settings, servicer) as stub:
        started = time.monotonic()
        error = rpc_error(lambda: stub.Store(cache_pb2.StoreReq(key="sleep=2", value=b"v")))
        assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 1.5
        assert stub.Get(cache_pb2.GetReq(key="sleep=0.4")).value == b"sleep=0.4"
        [store_timeout] = stub.middleware[STORE]
        [get_timeout] = stub.middleware[GET]
    assert isinstance(store_timeout, Timeout) and store_timeout.options.seconds == 0.2
    assert isinstance(get_timeout, Timeout) and get_timeout.options.seconds == 5.0


def test_breaker_opens_and_fails_fast(pairing: Pairing) -> None:
    settings = plain_settings(
        CLIENT_MIDDLEWARE=["resilience.middleware.CircuitBreaker"],
        CLIENT_OPTIONS={"CircuitBreaker": {"fail_max": 2, "reset_timeout": 60.0}},
    )
    servicer = ScriptedServicer()
    key = "fail=UNAVAILABLE"
    with plain_app(pairing, settings, servicer) as stub:
        for _ in range(2):
            error = rpc_error(lambda: stub.Get(cache_pb2.GetReq(key=key), timeout=10))
            assert error.code() is grpc.StatusCode.UNAVAILABLE
            assert "scripted" in error.details()
        started = time.monotonic()
        error = rpc_error(lambda: stub.Get(cache_pb2.GetReq(key=key), timeout=10))
        assert time.monotonic() - started < 0.5
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        assert f"circuit breaker for {GET} is open" in error.details()
        [breaker] = stub.middleware[GET]
        assert isinstance(breaker, CircuitBreaker)
    assert servicer.attempts[key] == 2  # the third call never left the client


def test_server_stack_rejects_beyond_its_limit(pairing: Pairing) -> None:
    settings = plain_settings(
        SERVER_MIDDLEWARE=["resilience.middleware.ConcurrencyLimit"],
        SERVER_OPTIONS={"ConcurrencyLimit": {"max_in_flight": 1}},
    )
    servicer = ScriptedServicer()
    with plain_app(pairing, settings, servicer) as stub:
        slow: list[Any] = []
        worker = threading.Thread(
            target=lambda: slow.append(stub.Get(cache_pb2.GetReq(key="sleep=1.5"), timeout=10))
        )
        worker.start()
        deadline = time.monotonic() + 5
        while servicer.in_flight < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert servicer.in_flight == 1
        error = rpc_error(lambda: stub.Get(cache_pb2.GetReq(key="fast"), timeout=10))
        worker.join(10)
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "concurrency limit reached: 1 calls in flight" in error.details()
    assert [r.value for r in slow] == [b"sleep=1.5"]
    assert servicer.attempts["fast"] == 0  # rejected before the servicer


def test_every_call_kind_runs_through_both_stacks(pairing: Pairing) -> None:
    settings = plain_settings(
        CLIENT_MIDDLEWARE=["resilience.middleware.Retry", "resilience.middleware.Timeout",
                           "resilience.middleware.CircuitBreaker"],
        SERVER_MIDDLEWARE=["resilience.middleware.RequestLogging",
                           "resilience.middleware.ConcurrencyLimit"],
    )
    servicer = ScriptedServicer(dump_items=5)
    with plain_app(pairing, settings, servicer) as stub:
        items = list(stub.Dump(cache_pb2.DumpReq(), timeout=10))
        assert [i.key for i in items] == [f"k{n}" for n in range(5)]
        assert stub.collect([b"a", b"b", b"c"]) == b"abc"
        assert stub.echo([b"x", b"y"]) == [b"x", b"y"]
        middleware = stub.middleware
    # Retry serves the stream (idempotent by its proto) but not the echo service's methods.
    assert [type(m).__name__ for m in middleware["cache.CacheService/Dump"]] == [
        "Retry", "Timeout", "CircuitBreaker"]
    assert [type(m).__name__ for m in middleware[COLLECT.lstrip("/")]] == [
        "Timeout", "CircuitBreaker"]


# --- one mode at a time --------------------------------------------------------------------


def test_sync_future_and_with_call_return_a_call_and_a_future() -> None:
    settings = plain_settings(CLIENT_MIDDLEWARE=["resilience.middleware.CircuitBreaker"])
    with plain_server("sync", settings, ScriptedServicer()) as address, \
            plain_client("sync", settings, address) as stub:
        response, call = stub.Get.with_call(cache_pb2.GetReq(key="k"), timeout=10)
        assert response.value == b"k"
        assert call.code() is grpc.StatusCode.OK
        future = stub.Get.future(cache_pb2.GetReq(key="notfound"), timeout=10)
        assert isinstance(future, grpc.Future) and isinstance(future, grpc.Call)
        assert future.code() is grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError):
            future.result()


@pytest.mark.parametrize("server_kind", ["sync", "aio"])
def test_aio_write_style_request_streams_run_through_the_chain(server_kind: str) -> None:
    settings = plain_settings()
    with plain_server(server_kind, settings, ScriptedServicer()) as address, \
            plain_client("aio", settings, address) as stub:
        assert stub.collect_by_writing([b"a", b"b", b"c"]) == b"abc"


def test_aio_local_rejections_are_aio_rpc_errors() -> None:
    settings = plain_settings(
        CLIENT_MIDDLEWARE=["resilience.middleware.ConcurrencyLimit"],
        CLIENT_OPTIONS={"ConcurrencyLimit": {"max_in_flight": 1}},
    )
    servicer = ScriptedServicer()
    with plain_server("sync", settings, servicer) as address, \
            plain_client("aio", settings, address) as stub:
        slow = stub.Get.future(cache_pb2.GetReq(key="sleep=1.0"), timeout=10)
        deadline = time.monotonic() + 5
        while servicer.in_flight < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            stub.Get(cache_pb2.GetReq(key="fast"), timeout=10)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert slow.result(timeout=10).value == b"sleep=1.0"


def test_health_and_reflection_bypass_the_server_stack() -> None:
    interceptor: Any = server_interceptor(plain_settings())
    assert "cache.CacheService/Get" in interceptor._methods
    assert "grpc.health.v1.Health/Check" not in interceptor._methods
    assert "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo" not in (
        interceptor._methods)


def test_channel_options_keep_transparent_retries_and_resolver_service_configs_off() -> None:
    """grpcio's transparent retries stay on (enable_retries is left at its default); a
    resolver may not supply a service config, whose retryPolicy would multiply Retry's."""
    assert ("grpc.service_config_disable_resolution", 1) in CHANNEL_OPTIONS
    assert "grpc.enable_retries" not in dict(CHANNEL_OPTIONS)


# --- settings ------------------------------------------------------------------------------

FACTORIES = [server_interceptor, aio_server_interceptor, client_interceptors,
             aio_client_interceptors]


def write_settings(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(f"[default]\nINSTALLED_APPS = []\n{body}\n[development]\n[testing]\n")
    return path


@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f.__name__)
def test_a_bad_settings_file_gives_checks_message(
    tmp_path: Path, factory: Callable[..., Any]
) -> None:
    path = write_settings(tmp_path, 'CLIENT_MIDDLEWARE = ["resilience.middleware.Retyr"]')
    with pytest.raises(ImproperlyConfigured) as info:
        factory(str(path))
    message = str(info.value)
    assert "ERROR resilience.E002 CLIENT_MIDDLEWARE (environment 'development')" in message
    assert "'resilience.middleware.Retyr' does not import" in message
    assert "HINT:" in message


def test_settings_come_from_resilience_settings_and_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(
        "[default]\nINSTALLED_APPS = []\n[development]\n"
        "[testing]\n[testing.SERVER_OPTIONS.ConcurrencyLimit]\nmax_in_flight = 0\n"
    )
    monkeypatch.setenv("RESILIENCE_SETTINGS", str(path))
    server_interceptor()  # development: fine
    monkeypatch.setenv("RESILIENCE_ENV", "testing")
    with pytest.raises(ImproperlyConfigured, match=r"resilience\.E005 .*'max_in_flight' is 0"):
        server_interceptor()


def test_a_missing_settings_file_is_e000(tmp_path: Path) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"^ERROR resilience.E000 settings: "):
        client_interceptors(tmp_path / "nope.toml")


def test_checks_fit_an_application_without_resilience_apps() -> None:
    # A per-method chain for the application's own service is no E008 here ...
    client_interceptors(plain_settings(
        CLIENT_METHOD_MIDDLEWARE={"shop.Orders/Place": ["resilience.middleware.Timeout"]},
        IDEMPOTENT_METHODS=["shop.Orders/Lookup", "shop.Catalog"],
    ))
    # ... but a malformed key is, and the default chain is checked with no method to hang
    # it on.
    with pytest.raises(ImproperlyConfigured, match=r"resilience\.E008"):
        client_interceptors(plain_settings(CLIENT_METHOD_OPTIONS={"Place": {}}))
    with pytest.raises(ImproperlyConfigured, match=r"resilience\.E050"):
        client_interceptors(plain_settings(IDEMPOTENT_METHODS=["Lookup"]))
    with pytest.raises(ImproperlyConfigured, match=r"resilience\.E011"):
        client_interceptors(plain_settings(CLIENT_MIDDLEWARE=[
            "resilience.middleware.Retry", "resilience.middleware.Hedging"]))
    with pytest.raises(ImproperlyConfigured, match=r"resilience\.E004"):
        server_interceptor(plain_settings(SERVER_MIDDLEWARE=["resilience.middleware.Retry"]))


def test_the_mode_is_the_interceptors_not_the_asyncio_setting() -> None:
    settings = plain_settings(CLIENT_MIDDLEWARE=["tests.support.modes.AsyncOnly"])
    aio_client_interceptors(settings)
    with pytest.raises(ImproperlyConfigured, match=r"resilience\.E009"):
        client_interceptors(settings)
