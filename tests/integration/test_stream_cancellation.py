"""Stress: clients cancel 1,000 response streams mid-flight against ``manage.py runserver``
(sync and ``--asyncio``) with the shipped server stack (settings/settings.toml: Metrics,
RequestContext, RequestLogging, ConcurrencyLimit).

The server is a process of its own, so that a crash (grpc.aio used to take a SIGSEGV from
a middleware reading a finished call's context) shows as a dead server, not a dead pytest.
Afterwards it must still answer, and its /metrics must count exactly 1,000 CANCELLED
Dumps, nothing else, with every ConcurrencyLimit slot given back.
"""

from __future__ import annotations

import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from apps.cache.protos import cache_pb2, cache_pb2_grpc
from tests.integration.test_runserver import runserver

pytestmark = pytest.mark.timeout(90)

STREAMS = 1000
READERS = 4
#: Enough that no Dump can finish before its cancel: far more than HTTP/2's windows.
ENTRIES = 200
VALUE = b"v" * 65536


def scrape(url: str) -> tuple[Counter[str], float]:
    """The server's grpc_server_handled_total of Dump by code, and the calls its
    ConcurrencyLimit holds."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    handled: Counter[str] = Counter()
    in_flight = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "grpc_server_handled_total" and labels["grpc_method"] == "Dump":
                handled[labels["grpc_code"]] += int(sample.value)
            elif (sample.name == "resilience_limiter_in_flight"
                  and labels["limiter"] == "ConcurrencyLimit"):
                in_flight += sample.value
    return handled, in_flight


def cancel_streams(stub: cache_pb2_grpc.CacheServiceStub, count: int) -> None:
    """Start ``count`` Dumps one after another, each cancelled after its first item."""
    for _ in range(count):
        responses = stub.Dump(cache_pb2.DumpReq(), timeout=30)
        assert next(responses).val == VALUE
        responses.cancel()


@pytest.mark.parametrize("mode", [(), ("--asyncio",)], ids=["sync", "asyncio"])
def test_cancelled_streams_leave_the_server_up_and_counted(mode: tuple[str, ...]) -> None:
    with runserver(*mode) as server, grpc.insecure_channel(server.address) as channel:
        stub = cache_pb2_grpc.CacheServiceStub(channel)
        for n in range(ENTRIES):
            stub.Store(cache_pb2.StoreReq(key=f"k{n}", value=VALUE), timeout=10)
        assert server.metrics_url, server.stderr()
        with ThreadPoolExecutor(READERS) as readers:
            runs = [readers.submit(cancel_streams, stub, STREAMS // READERS)
                    for _ in range(READERS)]
        returncode = server.proc.poll()
        assert returncode is None, f"the server died ({returncode}):\n{server.stderr()}"
        for run in runs:
            run.result()
        deadline = time.monotonic() + 15
        while True:
            handled, in_flight = scrape(server.metrics_url)
            if handled["CANCELLED"] >= STREAMS or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert server.proc.poll() is None, server.stderr()
        assert stub.Get(cache_pb2.GetReq(key="k0"), timeout=5).value == VALUE
        assert {code: n for code, n in handled.items() if n} == {"CANCELLED": STREAMS}
        assert in_flight == 0
