"""Timeout against a real server: it fails slow calls at about the timeout, passes the
deadline to the server, never extends the caller's deadline, and bounds each attempt or the
whole call depending on where it sits relative to Retry.

Every test runs in the four pairings of sync and asyncio client and server (the
``pairing`` fixture).
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest

from apps.cache.protos import cache_pb2
from tests.support.scripted import ScriptedServicer
from tests.support.servers import Pairing, make_settings

pytestmark = pytest.mark.timeout(60)

RETRY = "resilience.middleware.Retry"
TIMEOUT = "resilience.middleware.Timeout"
# grpc rounds the timeout it sends up, and the server counts from when the call arrived, so
# the server may see a hair more than the client's timeout left.
WIRE_SLACK = 0.01
RETRY_ON_DEADLINE = {
    "max_attempts": 3,
    "initial_backoff": 0.01,
    "max_backoff": 0.02,
    "retryable_codes": ["UNAVAILABLE", "DEADLINE_EXCEEDED"],
}


def timed_get(stub: Any, key: str, **kwargs: Any) -> tuple[grpc.RpcError, float]:
    """Call Get, expecting it to fail; return the error and how long the call took."""
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        stub.Get(cache_pb2.GetReq(key=key), **kwargs)
    return info.value, time.monotonic() - start


def warm(stub: Any) -> None:
    """Connect the channel, so that timings below do not include the dial."""
    assert stub.Get(cache_pb2.GetReq(key="warm"), timeout=5).value == b"warm"


def test_slow_handler_fails_with_deadline_exceeded_at_about_the_timeout(pairing: Pairing) -> None:
    settings = make_settings(
        CLIENT_MIDDLEWARE=[TIMEOUT], CLIENT_OPTIONS={"Timeout": {"seconds": 0.3}}
    )
    servicer = ScriptedServicer()
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        warm(stub)
        error, elapsed = timed_get(stub, "sleep=2")
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert 0.25 <= elapsed < 1.0
        # The deadline travelled with the call: the server saw at most 0.3 s left.
        remaining = servicer.time_remaining["sleep=2"]
        assert remaining is not None
        assert 0 < remaining <= 0.3 + WIRE_SLACK
        assert servicer.attempts["sleep=2"] == 1


def test_timeout_never_extends_the_callers_deadline(pairing: Pairing) -> None:
    settings = make_settings(
        CLIENT_MIDDLEWARE=[TIMEOUT], CLIENT_OPTIONS={"Timeout": {"seconds": 5}}
    )
    servicer = ScriptedServicer()
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        warm(stub)
        error, elapsed = timed_get(stub, "sleep=2", timeout=0.2)
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert elapsed < 1.0
        remaining = servicer.time_remaining["sleep=2"]
        assert remaining is not None
        assert 0 < remaining <= 0.2 + WIRE_SLACK


def test_timeout_inside_retry_bounds_each_attempt(pairing: Pairing) -> None:
    settings = make_settings(
        CLIENT_MIDDLEWARE=[RETRY, TIMEOUT],
        CLIENT_OPTIONS={"Retry": RETRY_ON_DEADLINE, "Timeout": {"seconds": 0.2}},
    )
    servicer = ScriptedServicer()
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        warm(stub)
        error, elapsed = timed_get(stub, "sleep=1")
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # Three attempts of 0.2 s each, and tiny backoffs between them.
        assert servicer.attempts["sleep=1"] == 3
        assert 0.5 <= elapsed < 1.5
        assert stub.channel.middleware["cache.CacheService/Get"][0].retries == 2


def test_timeout_outside_retry_bounds_the_whole_call(pairing: Pairing) -> None:
    settings = make_settings(
        CLIENT_MIDDLEWARE=[TIMEOUT, RETRY],
        CLIENT_OPTIONS={
            "Retry": {**RETRY_ON_DEADLINE, "jitter": "none"},
            "Timeout": {"seconds": 0.2},
        },
    )
    servicer = ScriptedServicer()
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        warm(stub)
        error, elapsed = timed_get(stub, "sleep=1")
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # grpc reports DEADLINE_EXCEEDED only once the shared deadline has passed, so no
        # backoff fits before it and Retry must give up after the one attempt.
        assert servicer.attempts["sleep=1"] == 1
        assert elapsed < 0.5
        assert stub.channel.middleware["cache.CacheService/Get"][1].retries == 0
