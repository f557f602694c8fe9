"""RateLimit against real servers and channels: a server admits R·t + B calls over t seconds
of overload and tells the rest when to come back (``grpc-retry-pushback-ms``); a client
either waits for its tokens or fails fast locally; tenants get buckets of their own.

Every test runs in the four pairings of sync and asyncio client and server (the
``pairing`` fixture).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
import pytest

from apps.cache.protos import cache_pb2
from resilience.core.errors import RpcStatusError
from tests.support.scripted import ScriptedServicer
from tests.support.servers import Pairing, make_settings

pytestmark = pytest.mark.timeout(60)

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
PUSHBACK = "grpc-retry-pushback-ms"


class ArrivalServicer(ScriptedServicer):
    """Notes when each Get reached the servicer, i.e. was admitted by the server stack.
    ``begin`` is shared by the sync servicer and the asyncio one made from it."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[float] = []

    def begin(self, key: str, context: Any) -> int:
        self.arrivals.append(time.monotonic())
        return super().begin(key, context)


def server_limited(**options: Any) -> Any:
    return make_settings(
        CLIENT_MIDDLEWARE=[],
        SERVER_MIDDLEWARE=["resilience.middleware.RateLimit"],
        SERVER_OPTIONS={"RateLimit": options},
        SERVER_MAX_WORKERS=32,
    )


def client_limited(**options: Any) -> Any:
    return make_settings(
        CLIENT_MIDDLEWARE=["resilience.middleware.RateLimit"],
        CLIENT_OPTIONS={"RateLimit": options},
        SERVER_MIDDLEWARE=[],
    )


def pushback_ms(exc: grpc.RpcError) -> int | None:
    for key, value in exc.trailing_metadata() or ():
        if key == PUSHBACK:
            return int(value)
    return None


def get(stub: Any, key: str, **kwargs: Any) -> Any:
    """The code of one Get: "ok", or the error's status code, with the error itself."""
    try:
        stub.Get(cache_pb2.GetReq(key=key), timeout=5, **kwargs)
    except grpc.RpcError as exc:
        return exc.code(), exc
    return "ok", None


def test_overload_admits_rate_times_t_plus_burst_and_pushes_back(pairing: Pairing) -> None:
    # Four threads drive several times the rate; more only fight the server for the GIL
    # (client and server share this process) and can starve it for longer than the
    # bucket's burst / rate = 0.1 s, during which a full bucket wastes tokens.
    rate, burst, seconds, threads = 200.0, 20, 2.0, 4
    settings = server_limited(rate=rate, burst=burst)
    servicer = ArrivalServicer()
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        assert get(stub, "warm")[0] == "ok"
        time.sleep(2 * burst / rate)  # the bucket is full again
        servicer.arrivals.clear()
        ok = [0] * threads
        pushbacks: list[list[int | None]] = [[] for _ in range(threads)]
        others: list[Any] = []
        barrier = threading.Barrier(threads)

        def hammer(i: int) -> None:
            barrier.wait(timeout=10)
            stop = time.monotonic() + seconds
            while time.monotonic() < stop:
                code, exc = get(stub, "k")
                if code == "ok":
                    ok[i] += 1
                elif code == EXHAUSTED:
                    pushbacks[i].append(pushback_ms(exc))
                else:
                    others.append(exc)

        workers = [threading.Thread(target=hammer, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=30)
        assert not any(worker.is_alive() for worker in workers)

    assert others == []
    rejected = [ms for per_thread in pushbacks for ms in per_thread]
    accepted = sum(ok)
    assert accepted == len(servicer.arrivals)
    assert len(rejected) > accepted, "the load never exceeded the rate; the test proves nothing"
    # The server's own window: from the first admitted call (a full bucket) to the last.
    # Saturated throughout, the bucket admits its burst, then exactly `rate` per second.
    window = max(servicer.arrivals) - min(servicer.arrivals)
    assert 0.8 * seconds < window <= seconds + 0.5
    expected = burst + rate * window
    assert abs(accepted - expected) <= 0.05 * expected, (accepted, expected, window)
    # Every rejection says when a token is free: within one token's time at this rate.
    assert all(ms is not None and 1 <= ms <= 1000 / rate + 1 for ms in rejected), \
        sorted(set(rejected), key=str)


def test_client_that_waits_is_paced_and_never_fails(pairing: Pairing) -> None:
    settings = client_limited(rate=20.0, burst=1, wait=True)
    servicer = ScriptedServicer()
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        assert get(stub, "warm")[0] == "ok"
        time.sleep(0.1)  # the one token is back
        start = time.monotonic()
        codes = [get(stub, "paced")[0] for _ in range(10)]
        elapsed = time.monotonic() - start
    assert codes == ["ok"] * 10
    assert servicer.attempts["paced"] == 10
    assert 0.35 <= elapsed <= 1.5  # 9 waits of 50 ms after the burst of 1


def test_client_that_waits_fails_at_once_when_the_wait_would_pass_the_deadline(
    pairing: Pairing,
) -> None:
    settings = client_limited(rate=1.0, burst=1, wait=True)
    servicer = ScriptedServicer()
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        assert get(stub, "first")[0] == "ok"
        start = time.monotonic()
        with pytest.raises(RpcStatusError) as rejected:
            stub.Get(cache_pb2.GetReq(key="late"), timeout=0.3)
        assert time.monotonic() - start < 0.1
    assert rejected.value.code() == EXHAUSTED
    assert "waiting would pass this call's deadline" in rejected.value.details()
    assert servicer.attempts["late"] == 0


def test_client_without_wait_fails_extra_calls_fast_and_locally(pairing: Pairing) -> None:
    settings = client_limited(rate=1.0, burst=2)
    servicer = ScriptedServicer()
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        results = []
        for _ in range(10):
            start = time.monotonic()
            code, exc = get(stub, "k")
            results.append((code, exc, time.monotonic() - start))
    assert [code for code, _, _ in results] == ["ok", "ok"] + [EXHAUSTED] * 8
    assert servicer.attempts["k"] == 2  # the rest never left the client
    for _, exc, elapsed in results[2:]:
        assert isinstance(exc, RpcStatusError)
        assert exc.retryable is False
        assert "(rejected by this client)" in exc.details()
        assert 1 <= (pushback_ms(exc) or 0) <= 1000
        assert elapsed < 0.05


def test_each_tenant_gets_its_own_burst(pairing: Pairing) -> None:
    settings = server_limited(rate=0.5, burst=3, key="metadata", metadata_key="x-tenant")
    servicer = ScriptedServicer()
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        codes = {
            tenant: [get(stub, f"t-{tenant}", metadata=(("x-tenant", tenant),))[0]
                     for _ in range(5)]
            for tenant in ("a", "b")
        }
        anonymous = [get(stub, "anonymous") for _ in range(4)]
    assert codes == {"a": ["ok"] * 3 + [EXHAUSTED] * 2, "b": ["ok"] * 3 + [EXHAUSTED] * 2}
    assert [code for code, _ in anonymous] == ["ok"] * 3 + [EXHAUSTED]
    exc = anonymous[-1][1]
    assert "calls without 'x-tenant' on this server" in exc.details()
    assert 1000 <= (pushback_ms(exc) or 0) <= 2000  # half a token per second


def test_streams_take_one_token_at_the_start_from_the_servers_bucket(pairing: Pairing) -> None:
    settings = server_limited(rate=0.5, burst=2)
    servicer = ScriptedServicer(dump_items=10)
    with pairing.server(settings, servicer) as server, \
            pairing.client(settings, server.address) as stub:
        assert len(list(stub.Dump(cache_pb2.DumpReq(), timeout=5))) == 10  # one token, not 10
        assert get(stub, "get")[0] == "ok"  # the other token, shared by every method
        with pytest.raises(grpc.RpcError) as rejected:
            list(stub.Dump(cache_pb2.DumpReq(), timeout=5))
    assert rejected.value.code() == EXHAUSTED
    assert "rate limit exceeded: 0.5 calls/s with bursts of 2" in rejected.value.details()
    assert f"all methods of this server ({server.address})" in rejected.value.details()
    assert 1 <= (pushback_ms(rejected.value) or 0) <= 2000
    assert servicer.attempts["dump"] == 1
