"""What the default client chain costs per call under asyncio (grpc.aio).

The default chain (Retry, Timeout, CircuitBreaker) on ``aio_connect()`` is compared with a
bare grpc.aio stub on a default ``grpc.aio.insecure_channel`` (no options, so grpcio's
retries are on, as a user has it), every ratio against the bare grpc.aio call measured
in the same run:

* sequential latency over loopback: bare grpc.aio, bare grpc.aio with ``timeout=1.0``
  (the chain's Timeout gives every call a deadline, which costs grpc itself), the aio
  chain, and, for aio against sync, the bare grpcio stub and the sync chain of
  ``connect()``. Clients take turns in many short rotating rounds; the aio ones on one
  event loop, the sync ones called directly between them, outside the loop. The median
  per call and the median of the per-round ratios are reported;
* server streaming, measured the same way by the aio clients, chain against bare: a Dump
  of a cache holding a few entries, each call read to the end of its stream;
* in-process cost with no network: the async chain over a terminal coroutine that returns
  a constant, in nanoseconds per awaited call, against awaiting that coroutine bare;
* throughput at concurrency 64: 64 tasks on the loop sharing one channel per client,
  rounds interleaved, in calls per second;
* targets, reported as pass or fail: latency within 3% of bare aio and throughput at least
  0.97x bare aio, as for the sync chain, and both again against bare aio with the deadline.

The server is the real cache app on the asyncio server (``AioServer``, the async
servicer) with no server middleware, in a separate process, so the client process's cost
is what is measured. Run with ``python -m benchmarks.aio_overhead [--quick]`` or
``manage.py bench aio_overhead``.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TextIO

import grpc
import grpc.aio

from apps.cache.protos import cache_pb2, cache_pb2_grpc
from benchmarks._common import (
    DEFAULT_CHAIN_NAMES,
    DEFAULT_CLIENT_MIDDLEWARE,
    KEY,
    METHOD,
    RESULTS_DIR,
    STREAM_KEYS,
    STREAM_METHOD,
    VALUE,
    OverheadPlan,
    OverheadReport,
    ainterleaved_round,
    bench_settings,
    cli,
    finish,
    header,
    interleaved_round,
    latency_figures,
    ratio_targets,
    rotated,
    round_ratio_medians,
    server_process,
)
from resilience.conf.factory import ChainFactory
from resilience.conf.settings import Settings
from resilience.core.call import Call, CallKind
from resilience.transport.aio_client import AioResilientChannel, aio_connect
from resilience.transport.client import connect

NAME = "aio_overhead"
RESULTS = RESULTS_DIR / f"{NAME}.json"
SERVER = "aio"
SERVER_DESCRIPTION = (
    "AioServer (grpc.aio, AsyncCacheServicer), no server middleware, spawned process, loopback"
)
AIO_CLIENTS = ("bare", "bare_timeout", "chain")
SYNC_CLIENTS = ("sync_bare", "sync_chain")
# No single aio round or measurement may take longer than this (the server is local).
AIO_ROUND_LIMIT_S = 120.0

Get = Callable[[cache_pb2.GetReq], Any]
AGet = Callable[[cache_pb2.GetReq], Awaitable[Any]]


FULL = OverheadPlan(
    warmup_calls=500, latency_rounds=30, latency_calls=300,
    inproc_number=20_000, inproc_repeat=7,
    throughput_rounds=20, throughput_seconds=0.5, throughput_workers=64,
    throughput_max_calls=50_000,
)
QUICK = OverheadPlan(
    warmup_calls=30, latency_rounds=2, latency_calls=20,
    inproc_number=1000, inproc_repeat=2,
    throughput_rounds=1, throughput_seconds=0.2, throughput_workers=64,
    throughput_max_calls=2000,
)


# --- the clients -------------------------------------------------------------------------


def _aio_bare_channel(address: str) -> grpc.aio.Channel:
    """A default grpc.aio channel, as a user has one: no options, grpcio's retries on."""
    return grpc.aio.insecure_channel(address)


class Clients:
    """One channel per way of calling Get: ``aio`` ones give awaitables, ``sync`` ones
    responses. Open it inside the event loop that will use its aio channels."""

    def __init__(self, address: str, settings: Settings) -> None:
        self.aio_channels: list[Any] = []
        self.sync_channels: list[grpc.Channel] = []
        bare_stub = cache_pb2_grpc.CacheServiceStub(self._aio(_aio_bare_channel(address)))
        bare = bare_stub.Get
        timed = cache_pb2_grpc.CacheServiceStub(self._aio(_aio_bare_channel(address))).Get

        def bare_timeout(request: cache_pb2.GetReq) -> Awaitable[Any]:
            return timed(request, timeout=1.0)

        chain_channel = aio_connect(address, settings)
        chain_stub = cache_pb2_grpc.CacheServiceStub(self._aio(chain_channel))
        chain = chain_stub.Get
        self._check_chain(chain_channel)
        self.aio: dict[str, AGet] = {"bare": bare, "bare_timeout": bare_timeout, "chain": chain}
        self.bare_dump = bare_stub.Dump
        chain_dump = chain_stub.Dump

        async def bare_stream(request: cache_pb2.DumpReq) -> None:
            async for _ in self.bare_dump(request):
                pass

        async def chain_stream(request: cache_pb2.DumpReq) -> None:
            async for _ in chain_dump(request):
                pass

        self.stream: dict[str, Callable[[Any], Awaitable[Any]]] = {
            "bare": bare_stream, "chain": chain_stream,
        }

        sync_bare_channel = grpc.insecure_channel(address)
        sync_bare = cache_pb2_grpc.CacheServiceStub(self._sync(sync_bare_channel)).Get
        sync_chain_channel = connect(address, settings)
        sync_chain = cache_pb2_grpc.CacheServiceStub(self._sync(sync_chain_channel)).Get
        self._check_chain(sync_chain_channel)
        self.sync: dict[str, Get] = {"sync_bare": sync_bare, "sync_chain": sync_chain}
        self.store = cache_pb2_grpc.CacheServiceStub(self.sync_channels[0]).Store

    @staticmethod
    def _check_chain(channel: Any) -> None:
        for method in (METHOD, STREAM_METHOD):
            names = [type(m).__name__ for m in channel.middleware[method]]
            if names != DEFAULT_CHAIN_NAMES:
                raise RuntimeError(f"expected the default client chain on {method}, "
                                   f"built {names}")

    def _aio(self, channel: Any) -> Any:
        self.aio_channels.append(channel)
        return channel

    def _sync(self, channel: grpc.Channel) -> grpc.Channel:
        self.sync_channels.append(channel)
        return channel

    async def aclose(self) -> None:
        for channel in self.aio_channels:
            await channel.close()

    def close(self) -> None:
        for channel in self.sync_channels:
            channel.close()


# --- measurements ------------------------------------------------------------------------


def _on_loop(runner: asyncio.Runner, coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` to completion on the benchmark's one event loop, bounded in time."""
    return runner.run(asyncio.wait_for(coro, AIO_ROUND_LIMIT_S))


def measure_latency(
    runner: asyncio.Runner, clients: Clients, request: cache_pb2.GetReq, plan: OverheadPlan
) -> dict[str, Any]:
    """Sequential calls, clients interleaved call by call; medians in microseconds.

    In each round the aio clients take turns on the loop, then the sync clients take turns
    with the loop idle (or the other way round, alternating by round)."""

    def aio_round(n: int) -> tuple[dict[str, list[int]], dict[str, int]]:
        return _on_loop(runner, ainterleaved_round(clients.aio, request, n))

    def sync_round(n: int) -> tuple[dict[str, list[int]], dict[str, int]]:
        return interleaved_round(clients.sync, request, n)

    names = [*AIO_CLIENTS, *SYNC_CLIENTS]
    aio_round(plan.warmup_calls)
    sync_round(plan.warmup_calls)
    samples: dict[str, list[int]] = {name: [] for name in names}
    round_medians: dict[str, list[float]] = {name: [] for name in names}
    cpu = dict.fromkeys(names, 0)
    for round_no in range(plan.latency_rounds):
        halves = (aio_round, sync_round) if round_no % 2 == 0 else (sync_round, aio_round)
        for half in halves:
            got, used = half(plan.latency_calls)
            for name, values in got.items():
                samples[name].extend(values)
                round_medians[name].append(statistics.median(values))
                cpu[name] += used[name]
    return {
        "rounds": plan.latency_rounds,
        "calls_per_round": plan.latency_calls,
        **latency_figures(samples, round_medians, cpu),
        # aio against sync, like for like: each aio client over its sync counterpart.
        "aio_vs_sync": {
            "bare": round_ratio_medians(round_medians, "sync_bare", ["bare"])["bare"],
            "chain": round_ratio_medians(round_medians, "sync_chain", ["chain"])["chain"],
        },
    }


def measure_stream(
    runner: asyncio.Runner, clients: Clients, plan: OverheadPlan
) -> dict[str, Any]:
    """A Dump read to its end per call, aio chain against bare aio, interleaved call by
    call on the loop like the latency rounds."""
    request = cache_pb2.DumpReq()

    async def count() -> int:
        return len([item async for item in clients.bare_dump(request, timeout=10)])

    items = _on_loop(runner, count())
    names = list(clients.stream)
    _on_loop(runner, ainterleaved_round(clients.stream, request, plan.warmup_calls))
    samples: dict[str, list[int]] = {name: [] for name in names}
    round_medians: dict[str, list[float]] = {name: [] for name in names}
    cpu = dict.fromkeys(names, 0)
    for _ in range(plan.latency_rounds):
        got, used = _on_loop(
            runner, ainterleaved_round(clients.stream, request, plan.latency_calls)
        )
        for name in names:
            samples[name].extend(got[name])
            round_medians[name].append(statistics.median(got[name]))
            cpu[name] += used[name]
    return {
        "method": STREAM_METHOD,
        "items": items,
        "rounds": plan.latency_rounds,
        "calls_per_round": plan.latency_calls,
        **latency_figures(samples, round_medians, cpu),
    }


class _ConstantAioChannel:
    """Stands in for a grpc.aio channel whose calls answer at once: no network at all."""

    def __init__(self, response: Any) -> None:
        self.response = response

    def _constant(self, *args: Any, **kwargs: Any) -> Callable[..., Awaitable[Any]]:
        response = self.response

        async def call(request: Any, **_: Any) -> Any:
            return response

        return call

    unary_unary = unary_stream = stream_unary = stream_stream = _constant


async def _await_bare(terminal: Callable[[Call], Awaitable[Any]], call: Call, n: int) -> int:
    clock = time.perf_counter_ns
    start = clock()
    for _ in range(n):
        await terminal(call)
    return clock() - start


async def _await_chain(chain: Callable[[Call], Awaitable[Any]], request: Any, n: int) -> int:
    kind = CallKind.UNARY_UNARY
    clock = time.perf_counter_ns
    start = clock()
    for _ in range(n):
        await chain(Call(METHOD, kind, "client", request))
    return clock() - start


async def _await_stub(get: AGet, request: Any, n: int) -> int:
    clock = time.perf_counter_ns
    start = clock()
    for _ in range(n):
        await get(request)
    return clock() - start


def measure_in_process(
    runner: asyncio.Runner, settings: Settings, request: Any, plan: OverheadPlan
) -> dict[str, Any]:
    """Nanoseconds per awaited call, best of ``inproc_repeat``, with no network at all."""
    response = cache_pb2.GetResp(value=VALUE)
    async def constant(call: Call) -> Any:
        return response

    factory = ChainFactory(settings, "client", is_async=True, target="bench")
    chain = factory.build(METHOD, CallKind.UNARY_UNARY, constant, idempotent=True)
    specs = factory.specs(METHOD)
    if len(factory.middleware[METHOD]) != len(specs):
        raise RuntimeError(f"the in-process chain lost middleware: built "
                           f"{factory.middleware[METHOD]} from {specs}")
    channel = AioResilientChannel(
        _ConstantAioChannel(response),
        ChainFactory(settings, "client", is_async=True, target="bench"),
    )
    stub_get = cache_pb2_grpc.CacheServiceStub(channel).Get
    call = Call(METHOD, CallKind.UNARY_UNARY, "client", request)
    n = plan.inproc_number
    runs: dict[str, Callable[[], Coroutine[Any, Any, int]]] = {
        "bare_await": lambda: _await_bare(constant, call, n),
        "chain": lambda: _await_chain(chain, request, n),
        "chain_stub": lambda: _await_stub(stub_get, request, n),
    }
    best = {name: float("inf") for name in runs}
    for _ in range(plan.inproc_repeat):  # interleaved, like the latency rounds
        for name, make in runs.items():
            best[name] = min(best[name], _on_loop(runner, make()) / n)
    base = best["bare_await"]
    return {
        "number": n,
        "repeat": plan.inproc_repeat,
        "ns_per_call": best,
        "overhead_ns": {name: v - base for name, v in best.items() if name != "bare_await"},
        "what": {
            "bare_await": "awaiting a coroutine function that returns a constant",
            "chain": "the default async chain over that coroutine function, a Call built "
            "per call",
            "chain_stub": "a stub on an AioResilientChannel over a constant channel: Call, "
            "async chain and terminal, as a real aio client call runs them",
        },
    }


async def _run_tasks(
    get: AGet, request: Any, tasks: int, seconds: float, max_calls: int
) -> tuple[int, int, float]:
    """(calls, errors, elapsed seconds) for ``tasks`` tasks calling for ``seconds``."""
    clock = time.perf_counter
    start = clock()
    deadline = start + seconds

    async def worker() -> tuple[int, int, float]:
        n = failed = 0
        while n < max_calls and clock() < deadline:
            n += 1
            try:
                await get(request)
            except grpc.RpcError:
                failed += 1
        return n, failed, clock()

    done = await asyncio.gather(*(worker() for _ in range(tasks)))
    return (
        sum(d[0] for d in done), sum(d[1] for d in done), max(d[2] for d in done) - start
    )


def measure_throughput(
    runner: asyncio.Runner, clients: Clients, request: Any, plan: OverheadPlan
) -> dict[str, Any]:
    """Calls per second with ``throughput_workers`` tasks sharing one channel per client."""
    names = list(AIO_CLIENTS)
    tasks, seconds = plan.throughput_workers, plan.throughput_seconds
    for name in names:  # warm up every client under concurrency
        _on_loop(runner, _run_tasks(clients.aio[name], request, tasks, min(0.2, seconds), 500))
    totals = {name: [0, 0, 0.0, 0.0] for name in names}
    per_round: dict[str, list[float]] = {name: [] for name in names}
    for round_no in range(plan.throughput_rounds):
        for name in rotated(names, round_no):
            cpu_start = time.process_time()
            calls, errors, elapsed = _on_loop(runner, _run_tasks(
                clients.aio[name], request, tasks, seconds, plan.throughput_max_calls
            ))
            totals[name][3] += time.process_time() - cpu_start
            totals[name][0] += calls
            totals[name][1] += errors
            totals[name][2] += elapsed
            per_round[name].append(calls / elapsed)
    rate = {n: t[0] / t[2] for n, t in totals.items()}
    return {
        "tasks": tasks,
        "seconds_per_measurement": seconds,
        "rounds": plan.throughput_rounds,
        "calls_per_s": rate,
        "errors": {n: int(t[1]) for n, t in totals.items()},
        "client_cpu_us_per_call": {n: t[3] * 1e6 / max(1, t[0]) for n, t in totals.items()},
        "ratio": {n: rate[n] / rate["bare"] for n in names if n != "bare"},
        "round_ratio_median": round_ratio_medians(per_round, "bare", names),
    }


def judge(results: dict[str, Any]) -> dict[str, Any]:
    """The targets, each with its figure and whether it was met: the sync chain's, for
    the aio chain against bare grpc.aio."""
    latency = results["latency"]["round_ratio_median"]["chain"]
    throughput = results["throughput"]["round_ratio_median"]["chain"]
    # The chain's Timeout gives every call a deadline, which costs grpc itself; against
    # a bare call with the same deadline the figures show what the chain alone adds.
    lat_t = latency / results["latency"]["round_ratio_median"]["bare_timeout"]
    tput_t = throughput / results["throughput"]["round_ratio_median"]["bare_timeout"]
    return ratio_targets(latency, throughput, lat_t, tput_t)


# --- report ------------------------------------------------------------------------------


def report(results: dict[str, Any], stdout: TextIO | None = None) -> None:
    lat, inproc, tput = results["latency"], results["in_process"], results["throughput"]
    out = OverheadReport("aio chain overhead", results["quick"], {
        "bare": "bare aio", "bare_timeout": "bare aio, timeout=1", "chain": "aio chain",
        "sync_bare": "bare sync", "sync_chain": "sync chain",
    }, base="bare aio")
    out.latency(lat)
    out.row("aio ÷ sync latency (round medians)", lat["aio_vs_sync"], ".3f")
    out.case(f"Dump stream of {results['stream']['items']}", results["stream"])
    out.in_process("in-process ns/awaited call", inproc["ns_per_call"],
                   ("bare_await", "-", "chain_stub", "-", "-"))
    out.throughput(tput, f"{tput['tasks']} tasks")
    out.print(results, stdout, f"server: {results['server']}; aio clients on one event loop, "
              "sync clients called between aio rounds with the loop idle")


# --- entry points ------------------------------------------------------------------------


def run(
    *, quick: bool = False, stdout: TextIO | None = None, output: Path | None = None
) -> dict[str, Any]:
    """Measure, print a table to ``stdout`` and return the figures.

    A full run writes them to ``benchmarks/results/aio_overhead.json`` (or ``output``);
    a quick run writes only to ``output``, if given, so it never replaces full figures.
    """
    plan = QUICK if quick else FULL
    began = time.perf_counter()
    settings = bench_settings(CLIENT_MIDDLEWARE=DEFAULT_CLIENT_MIDDLEWARE)
    request = cache_pb2.GetReq(key=KEY)
    results: dict[str, Any] = {
        **header(NAME, quick, plan, "pybreaker"),
        "method": METHOD,
        "client_chain": DEFAULT_CLIENT_MIDDLEWARE,
        "server": SERVER_DESCRIPTION,
        "event_loop": "asyncio (default policy), one loop for every aio client",
    }
    with asyncio.Runner() as runner:
        results["in_process"] = measure_in_process(runner, settings, request, plan)
        with server_process(SERVER) as address:

            async def open_clients() -> Clients:
                return Clients(address, settings)

            clients = runner.run(open_clients())
            try:
                for key in (KEY, *STREAM_KEYS):
                    clients.store(cache_pb2.StoreReq(key=key, value=VALUE), timeout=10)
                gc.collect()
                results["latency"] = measure_latency(runner, clients, request, plan)
                gc.collect()
                results["stream"] = measure_stream(runner, clients, plan)
                gc.collect()
                results["throughput"] = measure_throughput(runner, clients, request, plan)
            finally:
                clients.close()
                runner.run(clients.aclose())
    results["targets"] = judge(results)
    return finish(results, began, RESULTS, report, quick, stdout, output)


def main(argv: list[str] | None = None) -> int:
    return cli(argv, NAME, __doc__, run, RESULTS)


if __name__ == "__main__":
    sys.exit(main())
