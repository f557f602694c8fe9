"""The load driver makes exactly rate * duration calls, counts every outcome, and tells the
client's own rejections from the server's answers."""

from __future__ import annotations

import asyncio

import grpc

from resilience.core.errors import RpcStatusError
from resilience.loadgen import run_load, run_load_async


class ServerError(grpc.RpcError):
    """Stands in for an error grpc raised from a server's answer."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE


def send(i: int) -> None:
    if i % 4 == 1:
        raise ServerError()
    if i % 4 == 2:
        raise RpcStatusError(grpc.StatusCode.UNAVAILABLE, "breaker open", retryable=False)


def test_threads_count_every_call_and_mark_local_rejections() -> None:
    result = run_load(send, rate=400, duration=0.5, concurrency=4)
    assert result.calls == 200
    assert result.codes == {"OK": 100, "UNAVAILABLE": 50, "UNAVAILABLE (local)": 50}
    assert len(result.latencies) == result.successes == 100
    p50, p99 = result.percentile(50), result.percentile(99)
    assert p50 is not None and p99 is not None and 0 <= p50 <= p99


def test_tasks_count_every_call_and_mark_local_rejections() -> None:
    async def send_async(i: int) -> None:
        await asyncio.sleep(0)
        send(i)

    result = asyncio.run(run_load_async(send_async, rate=400, duration=0.5, concurrency=4))
    assert result.calls == 200
    assert result.codes == {"OK": 100, "UNAVAILABLE": 50, "UNAVAILABLE (local)": 50}
