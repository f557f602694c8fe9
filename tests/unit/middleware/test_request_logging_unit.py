"""RequestLogging: one line per RPC with status and timing, and never the payload."""

from __future__ import annotations

import grpc
import pytest
from structlog.testing import capture_logs

from resilience.core.call import Call, CallKind
from resilience.core.errors import RpcStatusError
from resilience.core.middleware import ChainInfo, MiddlewareOptions
from resilience.middleware.logging import RequestLogging

METHOD = "cache.CacheService/Get"
SECRET = "s3cret-payload"


def make(handler, side="client", kind=CallKind.UNARY_UNARY):
    info = ChainInfo(
        method=METHOD, kind=kind, side=side, name="RequestLogging", shared={}, target="cache:50051"
    )
    return RequestLogging(handler, MiddlewareOptions(), info)


def make_call(side="client", kind=CallKind.UNARY_UNARY, context=None, attempt=1):
    return Call(
        METHOD,
        kind,
        side,
        SECRET,
        metadata=(("authorization", "token"),),
        context=context,
        attempt=attempt,
    )


class FakeContext:
    """A servicer context that, like grpc.aio's, must not be read once its call is over."""

    def __init__(self):
        self.over = False

    def peer(self):
        assert not self.over, "peer() read after the call ended"
        return "ipv4:127.0.0.1:4242"


def test_one_line_per_successful_call():
    mw = make(lambda call: SECRET + "-response")
    with capture_logs() as logs:
        mw(make_call(attempt=2))
    assert len(logs) == 1
    line = logs[0]
    assert line["event"] == "rpc"
    assert line["log_level"] == "info"
    assert line["method"] == METHOD
    assert line["code"] == "OK"
    assert line["side"] == "client"
    assert line["peer"] == "cache:50051"
    assert line["attempt"] == 2
    assert isinstance(line["duration_ms"], float)
    assert line["duration_ms"] == round(line["duration_ms"], 2)


def test_error_code_logged_at_warning():
    def handler(call):
        raise RpcStatusError(grpc.StatusCode.UNAVAILABLE, "down")

    mw = make(handler)
    with capture_logs() as logs, pytest.raises(RpcStatusError):
        mw(make_call())
    assert len(logs) == 1
    assert logs[0]["code"] == "UNAVAILABLE"
    assert logs[0]["log_level"] == "warning"


def test_payload_and_metadata_never_logged():
    mw = make(lambda call: SECRET)
    with capture_logs() as logs:
        mw(make_call())
    assert SECRET not in repr(logs)
    assert "token" not in repr(logs)


def test_server_reads_the_peer_when_the_call_starts():
    context = FakeContext()

    def handler(call):
        call.context.over = True
        raise RpcStatusError(grpc.StatusCode.NOT_FOUND, "gone")

    mw = make(handler, side="server")
    with capture_logs() as logs, pytest.raises(RpcStatusError):
        mw(make_call("server", context=context))
    assert logs[0]["code"] == "NOT_FOUND"
    assert logs[0]["peer"] == "ipv4:127.0.0.1:4242"
    assert logs[0]["log_level"] == "warning"


def test_server_stream_closed_after_its_call_ended():
    context = FakeContext()

    def stream(call):
        yield 1
        yield 2

    mw = make(stream, side="server", kind=CallKind.UNARY_STREAM)
    with capture_logs() as logs:
        responses = mw(make_call("server", kind=CallKind.UNARY_STREAM, context=context))
        next(responses)
        context.over = True
        responses.close()
    assert [(line["code"], line["peer"]) for line in logs] == [
        ("CANCELLED", "ipv4:127.0.0.1:4242")
    ]


def test_stream_logged_once_when_it_ends():
    def stream(call):
        yield from range(3)

    mw = make(stream, kind=CallKind.UNARY_STREAM)
    with capture_logs() as logs:
        responses = mw(make_call(kind=CallKind.UNARY_STREAM))
        assert logs == []
        assert list(responses) == [0, 1, 2]
    assert [line["code"] for line in logs] == ["OK"]


def test_stream_error_and_early_close():
    def failing(call):
        yield 1
        raise RpcStatusError(grpc.StatusCode.INTERNAL, "boom")

    mw = make(failing, kind=CallKind.UNARY_STREAM)
    with capture_logs() as logs:
        with pytest.raises(RpcStatusError):
            list(mw(make_call(kind=CallKind.UNARY_STREAM)))
        responses = mw(make_call(kind=CallKind.UNARY_STREAM))
        next(responses)
        responses.close()
    assert [line["code"] for line in logs] == ["INTERNAL", "CANCELLED"]
