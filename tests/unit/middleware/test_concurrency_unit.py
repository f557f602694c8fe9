"""ConcurrencyLimit against fake handlers: rejection, release on every exit path, scopes."""

from __future__ import annotations

import gc
import threading

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience.core.call import Call, CallKind
from resilience.core.errors import RpcStatusError
from resilience.core.middleware import ChainInfo
from resilience.middleware.concurrency import ConcurrencyLimit

METHOD = "cache.CacheService/Get"


def make(handler, kind=CallKind.UNARY_UNARY, shared=None, method=METHOD, side="server", **opts):
    info = ChainInfo(
        method=method,
        kind=kind,
        side=side,
        name="ConcurrencyLimit",
        shared={} if shared is None else shared,
        target="[::]:50051",
    )
    return ConcurrencyLimit(handler, ConcurrencyLimit.Options(**opts), info)


def make_call(kind=CallKind.UNARY_UNARY, context=None, side="server"):
    return Call(METHOD, kind, side, "req", context=context)


class FakeContext:
    def __init__(self):
        self.callbacks = []

    def add_callback(self, callback):
        self.callbacks.append(callback)
        return True

    def terminate(self):
        for callback in self.callbacks:
            callback()


def test_rejects_beyond_the_limit_and_frees_slots():
    release = threading.Event()
    mw = make(lambda call: release.wait(10), max_in_flight=3)
    threads = [threading.Thread(target=mw, args=(make_call(),)) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(500):
            if mw.in_flight == 3:
                break
            threading.Event().wait(0.01)
        assert mw.in_flight == 3
        with pytest.raises(RpcStatusError) as excinfo:
            mw(make_call())
        assert excinfo.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "3 calls in flight" in excinfo.value.details()
        assert "retry later" in excinfo.value.details()
    finally:
        release.set()
        for thread in threads:
            thread.join(10)
    assert mw.in_flight == 0
    assert mw.limit == 3


def test_released_after_exception():
    def handler(call):
        raise RpcStatusError(grpc.StatusCode.INTERNAL, "boom")

    mw = make(handler, max_in_flight=1)
    for _ in range(3):
        with pytest.raises(RpcStatusError):
            mw(make_call())
    assert mw.in_flight == 0


def stream(call):
    yield from range(3)


def failing_stream(call):
    yield 1
    raise RpcStatusError(grpc.StatusCode.INTERNAL, "boom")


def test_stream_holds_slot_until_exhausted():
    mw = make(stream, kind=CallKind.UNARY_STREAM, max_in_flight=1)
    responses = mw(make_call(CallKind.UNARY_STREAM))
    assert mw.in_flight == 1
    assert list(responses) == [0, 1, 2]
    assert mw.in_flight == 0


def test_stream_released_on_error():
    mw = make(failing_stream, kind=CallKind.UNARY_STREAM, max_in_flight=1)
    responses = mw(make_call(CallKind.UNARY_STREAM))
    with pytest.raises(RpcStatusError):
        list(responses)
    assert mw.in_flight == 0


def test_stream_closed_early_releases_once():
    mw = make(stream, kind=CallKind.UNARY_STREAM, max_in_flight=2)
    context = FakeContext()
    responses = mw(make_call(CallKind.UNARY_STREAM, context))
    assert next(responses) == 0
    responses.close()
    assert mw.in_flight == 0
    context.terminate()  # the grpc termination callback must not release again
    assert mw.in_flight == 0


def test_abandoned_stream_released_by_termination_callback():
    mw = make(stream, kind=CallKind.UNARY_STREAM, max_in_flight=1)
    context = FakeContext()
    responses = mw(make_call(CallKind.UNARY_STREAM, context))
    assert mw.in_flight == 1
    context.terminate()
    assert mw.in_flight == 0
    assert list(responses) == [0, 1, 2]
    assert mw.in_flight == 0


def test_unstarted_stream_dropped_on_client_is_released():
    mw = make(stream, kind=CallKind.UNARY_STREAM, side="client", max_in_flight=1)
    responses = mw(make_call(CallKind.UNARY_STREAM, side="client"))
    assert mw.in_flight == 1
    del responses
    gc.collect()
    assert mw.in_flight == 0


def test_scope_server_shares_one_counter():
    shared = {}
    release = threading.Event()
    a = make(lambda call: release.wait(10), shared=shared, max_in_flight=1)
    b = make(lambda call: "b", shared=shared, method="cache.CacheService/Set", max_in_flight=1)
    thread = threading.Thread(target=a, args=(make_call(),))
    thread.start()
    try:
        for _ in range(500):
            if a.in_flight == 1:
                break
            threading.Event().wait(0.01)
        assert b.in_flight == 1
        with pytest.raises(RpcStatusError) as excinfo:
            b(make_call())
        assert "all methods of this server" in excinfo.value.details()
    finally:
        release.set()
        thread.join(10)


def test_scope_method_keeps_separate_counters():
    shared = {}
    a = make(stream, kind=CallKind.UNARY_STREAM, shared=shared, scope="method", max_in_flight=1)
    b = make(lambda call: "b", shared=shared, scope="method", max_in_flight=1)
    held = a(make_call(CallKind.UNARY_STREAM))
    assert a.in_flight == 1
    assert b(make_call()) == "b"
    assert b.in_flight == 0
    held.close()


@settings(max_examples=25, deadline=None)
@given(limit=st.integers(1, 6), callers=st.integers(1, 12))
def test_in_flight_never_exceeds_limit(limit, callers):
    mw = None
    peak = []
    lock = threading.Lock()

    def handler(call):
        with lock:
            peak.append(mw.in_flight)
        threading.Event().wait(0.001)
        return "ok"

    mw = make(handler, max_in_flight=limit)
    start = threading.Barrier(callers)
    outcomes = []

    def worker():
        start.wait()
        for _ in range(5):
            try:
                outcomes.append(mw(make_call()))
            except RpcStatusError as exc:
                outcomes.append(exc.code())

    threads = [threading.Thread(target=worker) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert max(peak) <= limit
    assert mw.in_flight == 0
    assert set(outcomes) <= {"ok", grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert len(outcomes) == callers * 5


def test_client_stream_with_call_options_context():
    """On a client ``call.context`` carries call options, not grpc termination callbacks."""
    from resilience.transport.client import CallOptions

    mw = make(stream, kind=CallKind.UNARY_STREAM, side="client", max_in_flight=1)
    options = CallOptions(credentials=None, wait_for_ready=True, compression=None)
    assert list(mw(make_call(CallKind.UNARY_STREAM, options, side="client"))) == [0, 1, 2]
    assert mw.in_flight == 0
