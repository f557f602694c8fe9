"""The recorder and the Metrics middleware against fake handlers, sync and asyncio; no
network. The registry is one per process, so every check reads a delta."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pybreaker
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from resilience.core.call import Call, CallKind
from resilience.core.chain import MiddlewareSpec, build_chain
from resilience.core.errors import RpcStatusError
from resilience.core.middleware import ChainInfo
from resilience.metrics import NULL_RECORDER, PrometheusRecorder, recorder_for
from resilience.metrics import rpc as rpc_module
from resilience.metrics.rpc import RpcCollector
from resilience.middleware import Fallback, FaultInjection, Metrics
from tests.support.servers import make_settings

SERVICE = "unit.MetricsService"
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def rpc_value(name: str, method: str, grpc_type: str = "unary", **labels: str) -> float:
    return value(name, grpc_type=grpc_type, grpc_service=SERVICE, grpc_method=method, **labels)


def event_value(name: str, method: str, side: str = "client", **labels: str) -> float:
    return value(name, side=side, grpc_service=SERVICE, grpc_method=method, **labels)


def test_recorder_for_follows_metrics_enabled() -> None:
    assert recorder_for(make_settings(METRICS_ENABLED=False), "client", "a.B/C") is NULL_RECORDER
    recorder = recorder_for(make_settings(METRICS_ENABLED=True), "client", "a.B/C")
    assert isinstance(recorder, PrometheusRecorder) and recorder.enabled


def test_null_recorder_does_nothing() -> None:
    breaker = pybreaker.CircuitBreaker()
    for call in (NULL_RECORDER.retry, NULL_RECORDER.hedge, NULL_RECORDER.fallback):
        call()
    NULL_RECORDER.rejected("throttle")
    NULL_RECORDER.fault("abort")
    NULL_RECORDER.watch_limiter("L", lambda: 1, lambda: 0)
    NULL_RECORDER.watch_breaker(breaker)
    assert breaker.listeners == ()


def test_recorder_events_are_labelled_by_side_and_method() -> None:
    method = "Events"
    recorder = PrometheusRecorder("server", f"{SERVICE}/{method}")
    names = {
        "resilience_retries_total": ({}, recorder.retry),
        "resilience_hedges_total": ({}, recorder.hedge),
        "resilience_fallbacks_total": ({}, recorder.fallback),
        "resilience_rejections_total": ({"reason": "bulkhead"},
                                        lambda: recorder.rejected("bulkhead")),
        "resilience_faults_injected_total": ({"fault": "abort"},
                                             lambda: recorder.fault("abort")),
    }
    for name, (labels, record) in names.items():
        before = event_value(name, method, "server", **labels)
        record()
        record()
        assert event_value(name, method, "server", **labels) - before == 2, name
        assert event_value(name, method, "client", **labels) == 0, name


def test_limiter_gauges_are_read_at_scrape_time() -> None:
    state = {"limit": 5, "in_flight": 0}
    PrometheusRecorder("server", f"{SERVICE}/Limited").watch_limiter(
        "ConcurrencyLimit", lambda: state["limit"], lambda: state["in_flight"])
    labels = {"limiter": "ConcurrencyLimit"}
    assert event_value("resilience_limiter_limit", "Limited", "server", **labels) == 5
    state.update(limit=7, in_flight=3)
    assert event_value("resilience_limiter_limit", "Limited", "server", **labels) == 7
    assert event_value("resilience_limiter_in_flight", "Limited", "server", **labels) == 3


def test_breaker_state_and_transitions() -> None:
    breaker = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=60)
    PrometheusRecorder("client", f"{SERVICE}/Guarded").watch_breaker(breaker)

    def transitions(old: str, new: str) -> float:
        return event_value("resilience_breaker_transitions_total", "Guarded",
                           from_state=old, to_state=new)

    assert event_value("resilience_breaker_state", "Guarded") == 0
    breaker.open()
    assert event_value("resilience_breaker_state", "Guarded") == 1
    breaker.half_open()
    assert event_value("resilience_breaker_state", "Guarded") == 2
    breaker.close()
    assert event_value("resilience_breaker_state", "Guarded") == 0
    assert transitions("closed", "open") == 1
    assert transitions("open", "half-open") == 1
    assert transitions("half-open", "closed") == 1


def chain(method: str, terminal: Any, *specs: tuple[type, dict[str, Any]],
          kind: CallKind = CallKind.UNARY_UNARY, side: str = "client",
          is_async: bool = False) -> tuple[Any, list[Any]]:
    full = f"{SERVICE}/{method}"
    resolved = [MiddlewareSpec(cls.__name__, cls, cls.__name__, cls.Options(**options))
                for cls, options in specs]
    return build_chain(resolved, terminal, method=full, kind=kind, side=side, shared={},
                       is_async=is_async, idempotent=True,
                       metrics=PrometheusRecorder(side, full))


def call(method: str, kind: CallKind = CallKind.UNARY_UNARY, side: str = "client",
         request: Any = "req") -> Call:
    return Call(f"{SERVICE}/{method}", kind, side, request)


def test_metrics_leaves_a_chain_whose_metrics_are_off() -> None:
    info = ChainInfo(f"{SERVICE}/Off", CallKind.UNARY_UNARY, "client", "Metrics", {})
    handler, used = build_chain(
        [MiddlewareSpec("Metrics", Metrics, "Metrics", Metrics.Options())], lambda c: "ok",
        method=info.method, kind=info.kind, side="client", shared={},
    )
    assert used == [] and handler(call("Off")) == "ok"


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "asyncio"])
def test_unary_outcomes(is_async: bool) -> None:
    method = f"Unary{is_async}"
    outcomes: list[BaseException | None] = [None, RpcStatusError(NOT_FOUND), ValueError()]

    def sync_terminal(c: Call) -> Any:
        error = outcomes.pop(0)
        if error is not None:
            raise error
        return "ok"

    async def async_terminal(c: Call) -> Any:
        return sync_terminal(c)

    handler, _ = chain(method, async_terminal if is_async else sync_terminal, (Metrics, {}),
                       side="server", is_async=is_async)
    for _ in range(3):
        try:
            result = handler(call(method, side="server"))
            if is_async:
                asyncio.run(result)
        except (RpcStatusError, ValueError):
            pass

    def handled(code: str) -> float:
        return rpc_value("grpc_server_handled_total", method, grpc_code=code)

    assert (handled("OK"), handled("NOT_FOUND"), handled("UNKNOWN")) == (1, 1, 1)
    assert rpc_value("grpc_server_started_total", method) == 3
    assert rpc_value("grpc_server_msg_received_total", method) == 3
    assert rpc_value("grpc_server_msg_sent_total", method) == 1
    assert rpc_value("grpc_server_handling_seconds_count", method) == 3


def test_sync_streams_count_messages_and_a_close_as_cancelled() -> None:
    method = "SyncBidi"
    kind = CallKind.STREAM_STREAM

    def terminal(c: Call) -> Iterator[Any]:
        yield from c.request

    handler, _ = chain(method, terminal, (Metrics, {}), kind=kind)
    assert list(handler(call(method, kind, request=iter("abc")))) == ["a", "b", "c"]
    stream = handler(call(method, kind, request=iter("xyz")))
    assert next(stream) == "x"
    stream.close()
    stream.close()

    def handled(code: str) -> float:
        return rpc_value("grpc_client_handled_total", method, "bidi_stream", grpc_code=code)

    assert (handled("OK"), handled("CANCELLED")) == (1, 1)
    assert rpc_value("grpc_client_msg_sent_total", method, "bidi_stream") == 4
    assert rpc_value("grpc_client_msg_received_total", method, "bidi_stream") == 4


def test_async_streams_count_messages_and_cancellation() -> None:
    method = "AsyncBidi"
    kind = CallKind.STREAM_STREAM

    async def terminal(c: Call) -> AsyncIterator[Any]:
        async for item in c.request:
            yield item
            await asyncio.sleep(0)

    async def requests(items: str) -> AsyncIterator[str]:
        for item in items:
            yield item

    handler, _ = chain(method, terminal, (Metrics, {}), kind=kind, is_async=True)

    async def scenario() -> None:
        assert [r async for r in handler(call(method, kind, request=requests("ab")))] == ["a", "b"]
        stream = handler(call(method, kind, request=requests("pq")))

        async def read_all() -> None:
            async for _ in stream:
                await asyncio.sleep(10)

        task = asyncio.create_task(read_all())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())

    def handled(code: str) -> float:
        return rpc_value("grpc_client_handled_total", method, "bidi_stream", grpc_code=code)

    assert (handled("OK"), handled("CANCELLED")) == (1, 1)
    assert rpc_value("grpc_client_msg_received_total", method, "bidi_stream") == 3


def test_faults_and_fallbacks_are_counted() -> None:
    method = "Faulty"

    def terminal(c: Call) -> Any:
        return "ok"

    handler, _ = chain(
        method, terminal, (Metrics, {}),
        (Fallback, {"function": "tests.support.fallbacks.fallback_value",
                    "codes": frozenset({grpc.StatusCode.UNAVAILABLE})}),
        (FaultInjection, {"abort_fraction": 1.0, "abort_code": grpc.StatusCode.UNAVAILABLE}),
    )
    for _ in range(3):
        handler(call(method))
    assert event_value("resilience_faults_injected_total", method, fault="abort") == 3
    assert event_value("resilience_fallbacks_total", method) == 3
    # The callers saw answers: a fallback's answer counts as OK.
    assert rpc_value("grpc_client_handled_total", method, grpc_code="OK") == 3


# --- the RPC collector: same samples as prometheus_client's own metrics, exact under threads


def reference_metrics(registry: CollectorRegistry, side: str) -> dict[str, Any]:
    """The five metrics as prometheus_client's own Counter and Histogram objects, with
    go-grpc-prometheus's names and help: what the collector must export, sample for sample."""
    who = side
    labels = ("grpc_type", "grpc_service", "grpc_method")
    return {
        "started": Counter(f"grpc_{side}_started_total",
                           f"Total number of RPCs started on the {who}.", labels,
                           registry=registry),
        "handled": Counter(f"grpc_{side}_handled_total",
                           f"Total number of RPCs completed on the {who}, regardless of "
                           f"success or failure.", (*labels, "grpc_code"), registry=registry),
        "received": Counter(f"grpc_{side}_msg_received_total",
                            f"Total number of RPC stream messages received by the {who}.",
                            labels, registry=registry),
        "sent": Counter(f"grpc_{side}_msg_sent_total",
                        f"Total number of gRPC stream messages sent by the {who}.", labels,
                        registry=registry),
        "seconds": Histogram(f"grpc_{side}_handling_seconds",
                             f"Histogram of response latency (seconds) of gRPC that had been "
                             f"application-level handled by the {who}.", labels,
                             registry=registry),
    }


def exposition(registry: CollectorRegistry) -> str:
    """The Prometheus and OpenMetrics text expositions, with every ``_created`` value
    masked (they are timestamps)."""
    text = generate_latest(registry).decode() + openmetrics_latest(registry).decode()
    return re.sub(r"(_created\{[^}]*\}) \S+", r"\1 T", text)


@pytest.mark.parametrize("side", ["server", "client"])
def test_rpc_collector_exports_what_prometheus_client_would(
        side: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    collector = RpcCollector(side)
    ours.register(collector)
    ref = reference_metrics(theirs, side)
    requests_out = "sent" if side == "client" else "received"
    responses_in = "received" if side == "client" else "sent"
    series = {
        ("unary", "Get"): collector.series(CallKind.UNARY_UNARY, "pkg.Svc/Get"),
        ("server_stream", "Dump"): collector.series(CallKind.UNARY_STREAM, "pkg.Svc/Dump"),
        ("client_stream", "Load"): collector.series(CallKind.STREAM_UNARY, "pkg.Svc/Load"),
    }
    for grpc_type, method in series:  # the Metrics middleware binds these at build time
        for name in ("started", "received", "sent", "seconds"):
            ref[name].labels(grpc_type, "pkg.Svc", method)

    def start(key: tuple[str, str]) -> None:
        series[key].start()
        ref["started"].labels(key[0], "pkg.Svc", key[1]).inc()
        if key[0] in ("unary", "server_stream"):
            ref[requests_out].labels(key[0], "pkg.Svc", key[1]).inc()

    def message(key: tuple[str, str]) -> None:
        if key[0] == "server_stream":
            series[key].count_response()
            ref[responses_in].labels(key[0], "pkg.Svc", key[1]).inc()
        else:
            series[key].count_request()
            ref[requests_out].labels(key[0], "pkg.Svc", key[1]).inc()

    def end(key: tuple[str, str], code: grpc.StatusCode, took: float | None) -> None:
        monkeypatch.setattr(rpc_module, "_clock", lambda: took)
        series[key].handled(code, None if took is None else 0.0)
        labels = (key[0], "pkg.Svc", key[1])
        if took is not None:
            ref["seconds"].labels(*labels).observe(took)
        ref["handled"].labels(*labels, code.name).inc()
        if code is grpc.StatusCode.OK and key[0] != "server_stream":
            ref[responses_in].labels(*labels).inc()

    get, dump, load = series
    for _ in range(3):
        start(get)
    end(get, grpc.StatusCode.OK, 0.003)
    start(dump)
    for _ in range(5):
        message(dump)
    end(dump, grpc.StatusCode.OK, None)
    end(get, grpc.StatusCode.OK, 0.2)
    end(get, grpc.StatusCode.NOT_FOUND, 12.0)
    start(dump)  # still in flight
    start(load)
    for _ in range(3):
        message(load)
    end(load, grpc.StatusCode.OK, 0.005)
    start(load)
    end(load, grpc.StatusCode.CANCELLED, 0.05)

    assert exposition(ours) == exposition(theirs)
    assert 'grpc_code="NOT_FOUND"' in exposition(ours)
    assert [m.name for m in collector.describe()] == [m.name for m in theirs.collect()]


def test_timed_unary_calls_land_in_their_buckets() -> None:
    method = "Buckets"
    delays = [0.0, 0.012, 0.0]

    def terminal(c: Call) -> Any:
        time.sleep(delays.pop(0))
        return "ok"

    handler, _ = chain(method, terminal, (Metrics, {}), side="server")

    def bucket(le: str) -> float:
        return rpc_value("grpc_server_handling_seconds_bucket", method, le=le)

    for _ in range(3):
        handler(call(method, side="server"))
    assert (bucket("0.005"), bucket("0.01"), bucket("0.025"), bucket("+Inf")) == (2, 2, 3, 3)
    assert rpc_value("grpc_server_handling_seconds_count", method) == 3
    assert 0.012 <= rpc_value("grpc_server_handling_seconds_sum", method) < 1
    assert rpc_value("grpc_server_handled_total", method, grpc_code="OK") == 3
    assert rpc_value("grpc_server_msg_sent_total", method) == 3


@pytest.mark.timeout(60)
def test_counts_are_exact_under_threads_that_come_and_go() -> None:
    """Waves of threads call at once, each wave's threads end before the next starts
    (their shards are reused), while another thread scrapes: nothing is lost, and no
    counter ever goes down between scrapes."""
    method = "Threads"
    waves, threads, calls = 3, 6, 2000

    def terminal(c: Call) -> Any:
        if c.request % 4 == 0:
            raise RpcStatusError(NOT_FOUND)
        return "ok"

    handler, used = chain(method, terminal, (Metrics, {}), side="server")
    probes = {
        "started": lambda: rpc_value("grpc_server_started_total", method),
        "ok": lambda: rpc_value("grpc_server_handled_total", method, grpc_code="OK"),
        "not_found": lambda: rpc_value("grpc_server_handled_total", method,
                                       grpc_code="NOT_FOUND"),
        "count": lambda: rpc_value("grpc_server_handling_seconds_count", method),
    }
    done = threading.Event()
    went_down: list[tuple[str, float, float]] = []

    def scrape() -> None:
        last = dict.fromkeys(probes, 0.0)
        while not done.is_set():
            for name, probe in probes.items():
                now = probe()
                if now < last[name]:
                    went_down.append((name, last[name], now))
                last[name] = now

    def work() -> None:
        for i in range(calls):
            with contextlib.suppress(RpcStatusError):
                handler(call(method, side="server", request=i))

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for _ in range(waves):
            wave = [threading.Thread(target=work) for _ in range(threads)]
            for thread in wave:
                thread.start()
            for thread in wave:
                thread.join(timeout=30)
    finally:
        done.set()
        scraper.join(timeout=10)
    total = waves * threads * calls
    assert {name: probe() for name, probe in probes.items()} == {
        "started": total, "ok": total * 3 // 4, "not_found": total // 4, "count": total,
    }
    assert went_down == []
    # A finished thread's shard went to a thread of the next wave.
    assert len(used[0].series._shards) <= threads
