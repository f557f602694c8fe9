"""CircuitBreaker against fake handlers: tripping, failing fast, recovery, fallbacks, and
that calls through one breaker run concurrently."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from resilience.core.call import Call, CallKind
from resilience.core.errors import RpcStatusError
from resilience.core.middleware import ChainInfo
from resilience.core.options import build_options
from resilience.middleware.breaker import CircuitBreaker

METHOD = "cache.CacheService/Get"


def make(handler, kind=CallKind.UNARY_UNARY, **options):
    info = ChainInfo(method=METHOD, kind=kind, side="client", name="CircuitBreaker", shared={})
    return CircuitBreaker(handler, CircuitBreaker.Options(**options), info)


def make_call(request="req", kind=CallKind.UNARY_UNARY):
    return Call(METHOD, kind, "client", request)


class Backend:
    """A fake next handler that fails with ``code`` (or succeeds when it is None)."""

    def __init__(self, code=None):
        self.code = code
        self.calls = 0

    def __call__(self, call):
        self.calls += 1
        if self.code is not None:
            raise RpcStatusError(self.code, "boom")
        return "resp"


def fallback(request, error):
    return ("fallback", request, error.code())


NOT_CALLABLE = 42


def fail(mw, times):
    for _ in range(times):
        with pytest.raises(grpc.RpcError):
            mw(make_call())


def test_opens_after_fail_max_and_fails_fast_without_calling_handler():
    backend = Backend(grpc.StatusCode.UNAVAILABLE)
    mw = make(backend, fail_max=3)
    fail(mw, 3)
    assert mw.state == "open"
    assert backend.calls == 3

    with pytest.raises(RpcStatusError) as excinfo:
        mw(make_call())
    assert excinfo.value.code() == grpc.StatusCode.UNAVAILABLE
    assert METHOD in excinfo.value.details()
    assert "open" in excinfo.value.details()
    assert excinfo.value.retryable is False
    assert backend.calls == 3


def test_tripping_call_raises_the_real_error():
    mw = make(Backend(grpc.StatusCode.INTERNAL), fail_max=1)
    with pytest.raises(RpcStatusError) as excinfo:
        mw(make_call())
    assert excinfo.value.details() == "boom"
    assert mw.state == "open"


def test_caller_errors_never_open_it():
    backend = Backend(grpc.StatusCode.NOT_FOUND)
    mw = make(backend, fail_max=2)
    fail(mw, 100)
    assert mw.state == "closed"
    assert backend.calls == 100


def test_non_failure_status_resets_the_failure_count():
    backend = Backend(grpc.StatusCode.UNAVAILABLE)
    mw = make(backend, fail_max=3)
    fail(mw, 2)
    backend.code = grpc.StatusCode.INVALID_ARGUMENT
    fail(mw, 1)
    backend.code = grpc.StatusCode.UNAVAILABLE
    fail(mw, 2)
    assert mw.state == "closed"


def test_successful_trial_after_reset_timeout_closes_it():
    backend = Backend(grpc.StatusCode.UNAVAILABLE)
    mw = make(backend, fail_max=2, reset_timeout=0.2)
    fail(mw, 2)
    assert mw.state == "open"
    time.sleep(0.5)
    backend.code = None
    assert mw(make_call()) == "resp"
    assert mw.state == "closed"


def test_failed_trial_opens_it_again():
    backend = Backend(grpc.StatusCode.UNAVAILABLE)
    mw = make(backend, fail_max=2, reset_timeout=0.2)
    fail(mw, 2)
    time.sleep(0.5)
    fail(mw, 1)
    assert mw.state == "open"
    assert backend.calls == 3
    fail(mw, 1)
    assert backend.calls == 3


def test_only_one_trial_at_a_time():
    entered, release = threading.Event(), threading.Event()
    failing = True

    def handler(call):
        if failing:
            raise RpcStatusError(grpc.StatusCode.UNAVAILABLE, "down")
        entered.set()
        release.wait(5)
        return "resp"

    mw = make(handler, fail_max=1, reset_timeout=0.2)
    fail(mw, 1)
    time.sleep(0.5)
    failing = False
    results = []
    trial = threading.Thread(target=lambda: results.append(mw(make_call())))
    trial.start()
    assert entered.wait(5)
    assert mw.state == "half-open"
    with pytest.raises(RpcStatusError) as excinfo:
        mw(make_call())
    assert excinfo.value.code() == grpc.StatusCode.UNAVAILABLE
    release.set()
    trial.join(5)
    assert results == ["resp"]
    assert mw.state == "closed"


def test_fallback_when_open_and_on_failure():
    backend = Backend(grpc.StatusCode.UNAVAILABLE)
    mw = make(backend, fail_max=1, fallback=f"{__name__}.fallback")
    assert mw(make_call("a")) == ("fallback", "a", grpc.StatusCode.UNAVAILABLE)
    assert mw.state == "open"
    assert mw(make_call("b")) == ("fallback", "b", grpc.StatusCode.UNAVAILABLE)
    assert backend.calls == 1


def test_fallback_not_used_for_caller_errors():
    mw = make(Backend(grpc.StatusCode.NOT_FOUND), fallback=f"{__name__}.fallback")
    with pytest.raises(RpcStatusError):
        mw(make_call())


def test_streaming_outcome_recorded_when_stream_ends():
    def failing_stream(call):
        yield "first"
        raise RpcStatusError(grpc.StatusCode.UNAVAILABLE, "cut")

    mw = make(failing_stream, kind=CallKind.UNARY_STREAM, fail_max=1)
    stream = mw(make_call(kind=CallKind.UNARY_STREAM))
    assert mw.state == "closed"
    assert next(stream) == "first"
    with pytest.raises(RpcStatusError):
        next(stream)
    assert mw.state == "open"
    with pytest.raises(RpcStatusError) as excinfo:
        list(mw(make_call(kind=CallKind.UNARY_STREAM)))
    assert "is open" in excinfo.value.details()


def test_abandoned_stream_counts_as_neither():
    def stream(call):
        yield "first"
        yield "second"

    mw = make(stream, kind=CallKind.UNARY_STREAM, fail_max=1)
    mw.breaker._state_storage.increment_counter()
    responses = mw(make_call(kind=CallKind.UNARY_STREAM))
    next(responses)
    responses.close()
    assert mw.breaker.fail_counter == 1
    assert mw.state == "closed"


def test_state_changes_are_logged():
    from structlog.testing import capture_logs

    mw = make(Backend(grpc.StatusCode.UNAVAILABLE), fail_max=1)
    with capture_logs() as logs:
        fail(mw, 1)
    assert logs == [
        {
            "event": "breaker_state",
            "log_level": "warning",
            "method": METHOD,
            "old": "closed",
            "new": "open",
        }
    ]


def test_concurrent_calls_are_not_serialised():
    barrier = threading.Barrier(16, timeout=10)
    mw = make(lambda call: barrier.wait())
    errors = []

    def worker():
        try:
            mw(make_call())
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert errors == []
    assert mw.state == "closed"


@pytest.mark.parametrize("code", ["NOT_FOUND", "INVALID_ARGUMENT", "CANCELLED"])
def test_validate_rejects_caller_errors_in_failure_codes(code):
    options, problems = build_options(
        CircuitBreaker.Options, {"failure_codes": ["UNAVAILABLE", code]}
    )
    assert options is None
    assert len(problems) == 1
    assert "failure_codes" in problems[0]
    assert code in problems[0]
    assert "never trip" in problems[0]


def test_validate_rejects_bad_fallbacks():
    _, problems = build_options(CircuitBreaker.Options, {"fallback": "no.such.module.fn"})
    assert "fallback" in problems[0]
    assert "does not import" in problems[0]
    _, problems = build_options(CircuitBreaker.Options, {"fallback": f"{__name__}.NOT_CALLABLE"})
    assert "not a function" in problems[0]


def test_one_breaker_per_instance_named_after_the_method():
    a, b = make(Backend()), make(Backend())
    assert a.breaker is not b.breaker
    assert a.breaker.name == METHOD


def test_lost_trial_is_replaced_after_reset_timeout():
    failing = True

    def stream(call):
        if failing:
            raise RpcStatusError(grpc.StatusCode.UNAVAILABLE, "down")
        yield "first"
        yield "second"

    kind = CallKind.UNARY_STREAM
    mw = make(stream, kind=kind, fail_max=1, reset_timeout=0.2)
    with pytest.raises(RpcStatusError):
        list(mw(make_call(kind=kind)))
    time.sleep(0.5)
    failing = False
    lost = mw(make_call(kind=kind))
    assert next(lost) == "first"  # the trial, left hanging
    with pytest.raises(RpcStatusError):
        list(mw(make_call(kind=kind)))
    time.sleep(0.5)
    assert list(mw(make_call(kind=kind))) == ["first", "second"]
    assert mw.state == "closed"
    lost.close()  # a late report from the superseded trial changes nothing
    assert mw.state == "closed"


def test_the_storage_fields_read_on_the_hot_path_are_what_pybreaker_reports():
    """The per-call path reads pybreaker's memory storage fields, not its properties; a
    pybreaker that renamed them must fail here rather than leave the breaker blind."""
    backend = Backend(grpc.StatusCode.UNAVAILABLE)
    breaker = make(backend, fail_max=3)
    storage = breaker._storage
    assert (storage._state, storage._fail_counter) == (storage.state, storage.counter)
    with pytest.raises(RpcStatusError):
        breaker(make_call())
    assert storage._fail_counter == storage.counter == 1
    for _ in range(2):
        with pytest.raises(RpcStatusError):
            breaker(make_call())
    assert storage._state == storage.state == "open"
