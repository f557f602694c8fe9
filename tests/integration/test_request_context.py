"""RequestContext end to end, in all four client/server pairings: the log lines of one
retried call share one request id on both sides, each with its attempt, and no payload or
credential ever reaches a log line."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
import structlog
from structlog.testing import LogCapture

from apps.cache.protos import cache_pb2
from resilience.log import configure_logging
from tests.support.scripted import ScriptedServicer
from tests.support.servers import Pairing, make_settings

pytestmark = pytest.mark.timeout(60)

CONTEXT = "resilience.middleware.RequestContext"
LOGGING = "resilience.middleware.RequestLogging"
SETTINGS: dict[str, Any] = {
    "CLIENT_MIDDLEWARE": [CONTEXT, "resilience.middleware.Retry", LOGGING],
    "CLIENT_OPTIONS": {"Retry": {"initial_backoff": 0.01, "max_backoff": 0.02}},
    "SERVER_MIDDLEWARE": [CONTEXT, LOGGING],
    "IDEMPOTENT_METHODS": ["cache.CacheService/Store"],
}
SECRET_VALUE = "SENTINEL-PAYLOAD-7f3a"
SECRET_KEY = "SENTINEL-KEY-51be"
SECRET_TOKEN = "Bearer SENTINEL-TOKEN-9c1d"


@pytest.fixture
def logs() -> LogCapture:
    """Both sides' log lines (one process), with contextvars merged as resilience.log does."""
    capture = LogCapture()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    return capture


def test_one_retried_call_shares_one_request_id(pairing: Pairing, logs: LogCapture) -> None:
    settings = make_settings(**SETTINGS)
    with pairing.server(settings, ScriptedServicer()) as server, \
            pairing.client(settings, server.address) as stub:
        reply = stub.Get(cache_pb2.GetReq(key="fail=UNAVAILABLE*1"), timeout=10)
        assert reply.value == b"fail=UNAVAILABLE*1"
    lines = [e for e in logs.entries if e["event"] in ("rpc", "retrying")]
    ids = {e.get("request_id") for e in lines}
    assert len(ids) == 1 and None not in ids, lines
    server = [e["attempt"] for e in lines if e["event"] == "rpc" and e["side"] == "server"]
    client = [e["attempt"] for e in lines if e["event"] == "rpc" and e["side"] == "client"]
    assert sorted(server) == [1, 2], lines
    assert client == [1, 2], lines
    (retrying,) = [e for e in lines if e["event"] == "retrying"]
    assert retrying["attempt"] == 1


def test_a_callers_id_reaches_the_server_and_streams_carry_it(
    pairing: Pairing, logs: LogCapture
) -> None:
    settings = make_settings(**SETTINGS)
    with pairing.server(settings, ScriptedServicer(dump_items=3)) as server, \
            pairing.client(settings, server.address) as stub:
        stub.Get(cache_pb2.GetReq(key="k"), timeout=10,
                 metadata=(("x-request-id", "caller-chosen-1"),))
        items = list(stub.Dump(cache_pb2.DumpReq(), timeout=10,
                               metadata=(("x-request-id", "caller-stream-2"),)))
        assert len(items) == 3
    rpc = [(e["side"], e["method"].rpartition("/")[2], e["request_id"])
           for e in logs.entries if e["event"] == "rpc"]
    assert sorted(rpc) == sorted([
        ("client", "Get", "caller-chosen-1"), ("server", "Get", "caller-chosen-1"),
        ("client", "Dump", "caller-stream-2"), ("server", "Dump", "caller-stream-2"),
    ])


def test_payloads_and_credentials_are_never_logged(
    pairing: Pairing, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("DEBUG", "json")  # after capsys has replaced stderr
    settings = make_settings(**SETTINGS)
    auth = (("authorization", SECRET_TOKEN), ("x-api-key", SECRET_TOKEN))
    with pairing.server(settings, ScriptedServicer()) as server, \
            pairing.client(settings, server.address) as stub:
        # A Store retried once (its scripted first attempt fails), and a Get that fails.
        stub.Store(cache_pb2.StoreReq(key="fail=UNAVAILABLE*1", value=SECRET_VALUE.encode()),
                   timeout=10, metadata=auth)
        stub.Get(cache_pb2.GetReq(key=SECRET_KEY), timeout=10, metadata=auth)
        with pytest.raises(grpc.RpcError):
            stub.Get(cache_pb2.GetReq(key="notfound"), timeout=10, metadata=auth)
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert sum(line["event"] == "rpc" for line in lines) >= 8, err  # both sides logged
    assert any(line["event"] == "retrying" for line in lines), err
    for secret in (SECRET_VALUE, SECRET_KEY, "SENTINEL-TOKEN"):
        assert secret not in err
