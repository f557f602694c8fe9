"""What the default client chain costs per call.

The default chain (Retry, Timeout, CircuitBreaker) on a channel from ``connect()`` is
compared with a bare grpc stub on a default ``grpc.insecure_channel`` (no options, so
grpcio's retries are on, as a user has it), and with tenacity plus pybreaker stacked by
hand around the bare stub, the way the same policy is written without this framework.
Six measurements:

* sequential latency over loopback: the clients take turns call by call, in an order that
  rotates every turn, so drift of the machine on any time scale touches them all alike;
  the median per call and the median of the per-round ratios are reported;
* server streaming, measured the same way, chain against bare: a Dump of a cache holding
  a few entries, each call read to the end of its stream;
* ``stub.Get.future(request).result()``, measured the same way, chain against bare;
* in-process cost with no network: the same chain over a terminal that returns a
  constant, in nanoseconds per call, against a bare function call;
* concurrent throughput: 16 threads calling through one channel per client, rounds
  interleaved, in calls per second;
* targets, reported as pass or fail: latency within 3% of bare, throughput at least
  0.97x bare, and the chain cheaper than tenacity + pybreaker.

The server is the real CacheServicer with no server middleware, in a separate process,
so the client process's cost is what is measured. Run with
``python -m benchmarks.chain_overhead [--quick]`` or ``manage.py bench chain_overhead``.
"""

from __future__ import annotations

import gc
import statistics
import sys
import threading
import time
import timeit
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

import grpc
import pybreaker
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

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
    bench_settings,
    cli,
    finish,
    header,
    interleaved_round,
    latency_figures,
    ratio_targets,
    rotated,
    server_process,
)
from resilience.conf.factory import ChainFactory
from resilience.conf.settings import Settings
from resilience.core.call import Call, CallKind
from resilience.transport.client import ResilientChannel, connect

NAME = "chain_overhead"
RESULTS = RESULTS_DIR / f"{NAME}.json"

Get = Callable[[cache_pb2.GetReq], Any]


FULL = OverheadPlan(
    warmup_calls=1000, latency_rounds=30, latency_calls=300,
    inproc_number=20_000, inproc_repeat=7,
    throughput_rounds=24, throughput_seconds=0.5, throughput_workers=16,
    throughput_max_calls=200_000,
)
QUICK = OverheadPlan(
    warmup_calls=50, latency_rounds=3, latency_calls=30,
    inproc_number=1000, inproc_repeat=2,
    throughput_rounds=1, throughput_seconds=0.2, throughput_workers=4,
    throughput_max_calls=5000,
)


# --- the clients -------------------------------------------------------------------------


def _bare_channel(address: str) -> grpc.Channel:
    """A default grpcio channel, as a user has one: no options, grpcio's retries on."""
    return grpc.insecure_channel(address)


def _drain(responses: Iterable[Any]) -> None:
    """Read a response stream to its end, at C speed, keeping nothing."""
    deque(responses, maxlen=0)


def _tenacity_retrying() -> Retrying:
    return Retrying(
        stop=stop_after_attempt(3),
        wait=wait_random_exponential(multiplier=0.05, max=1),
        retry=retry_if_exception(
            lambda e: isinstance(e, grpc.RpcError) and e.code() == grpc.StatusCode.UNAVAILABLE
        ),
        reraise=True,
    )


def _tenacity_breaker() -> pybreaker.CircuitBreaker:
    return pybreaker.CircuitBreaker(fail_max=5, reset_timeout=10)


class Clients:
    """One channel per way of calling Get, each as a ``get(request)`` function."""

    def __init__(self, address: str, settings: Settings) -> None:
        self.channels: list[grpc.Channel] = []
        bare_stub = cache_pb2_grpc.CacheServiceStub(self._keep(_bare_channel(address)))
        bare = bare_stub.Get
        chain_channel = connect(address, settings)
        chain_stub = cache_pb2_grpc.CacheServiceStub(self._keep(chain_channel))
        chain = chain_stub.Get
        for method in (METHOD, STREAM_METHOD):
            names = [type(m).__name__ for m in chain_channel.middleware[method]]
            if names != DEFAULT_CHAIN_NAMES:
                raise RuntimeError(f"expected the default client chain on {method}, "
                                   f"built {names}")
        stub = cache_pb2_grpc.CacheServiceStub(self._keep(_bare_channel(address))).Get
        retrying = _tenacity_retrying()
        breaker = _tenacity_breaker()

        def tenacity(request: cache_pb2.GetReq) -> Any:
            return retrying(breaker.call, stub, request, timeout=1.0)

        lone = cache_pb2_grpc.CacheServiceStub(self._keep(_bare_channel(address))).Get
        lone_breaker = _tenacity_breaker()

        def pybreaker_only(request: cache_pb2.GetReq) -> Any:
            return lone_breaker.call(lone, request, timeout=1.0)

        timed = cache_pb2_grpc.CacheServiceStub(self._keep(_bare_channel(address))).Get

        def bare_timeout(request: cache_pb2.GetReq) -> Any:
            return timed(request, timeout=1.0)

        self.latency: dict[str, Get] = {
            "bare": bare, "bare_timeout": bare_timeout, "chain": chain, "tenacity": tenacity,
        }
        self.throughput: dict[str, Get] = {**self.latency, "pybreaker_call": pybreaker_only}
        self.store = bare_stub.Store
        self.bare_dump = bare_stub.Dump

        chain_dump = chain_stub.Dump

        def bare_stream(request: cache_pb2.DumpReq) -> None:
            _drain(self.bare_dump(request))

        def chain_stream(request: cache_pb2.DumpReq) -> None:
            _drain(chain_dump(request))

        self.stream: dict[str, Callable[[Any], Any]] = {
            "bare": bare_stream, "chain": chain_stream,
        }
        bare_future, chain_future = bare.future, chain.future

        def bare_future_result(request: cache_pb2.GetReq) -> Any:
            return bare_future(request).result()

        def chain_future_result(request: cache_pb2.GetReq) -> Any:
            return chain_future(request).result()

        self.future: dict[str, Get] = {"bare": bare_future_result, "chain": chain_future_result}

    def _keep(self, channel: grpc.Channel) -> grpc.Channel:
        self.channels.append(channel)
        return channel

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


# --- measurements ------------------------------------------------------------------------


def measure_latency(
    clients: dict[str, Callable[[Any], Any]], request: Any, plan: OverheadPlan
) -> dict[str, Any]:
    """Sequential calls, clients interleaved call by call; medians in microseconds, and
    ratios against the "bare" client."""
    names = list(clients)
    interleaved_round(clients, request, plan.warmup_calls)
    samples: dict[str, list[int]] = {name: [] for name in names}
    round_medians: dict[str, list[float]] = {name: [] for name in names}
    cpu = dict.fromkeys(names, 0)
    for _ in range(plan.latency_rounds):
        got, used = interleaved_round(clients, request, plan.latency_calls)
        for name in names:
            samples[name].extend(got[name])
            round_medians[name].append(statistics.median(got[name]))
            cpu[name] += used[name]
    return {
        "rounds": plan.latency_rounds,
        "calls_per_round": plan.latency_calls,
        **latency_figures(samples, round_medians, cpu),
    }


def measure_stream(clients: Clients, plan: OverheadPlan) -> dict[str, Any]:
    """A Dump read to its end per call, chain against bare, measured like latency."""
    request = cache_pb2.DumpReq()
    items = sum(1 for _ in clients.bare_dump(request, timeout=10))
    return {"method": STREAM_METHOD, "items": items,
            **measure_latency(clients.stream, request, plan)}


def measure_future(clients: Clients, request: Any, plan: OverheadPlan) -> dict[str, Any]:
    """``stub.Get.future(request).result()``, chain against bare, measured like latency."""
    return {"call": "stub.Get.future(request).result()",
            **measure_latency(clients.future, request, plan)}


class _ConstantChannel(grpc.Channel):
    """A channel whose multicallables answer at once: the client path minus the network."""

    def __init__(self, response: Any) -> None:
        self.response = response

    def _constant(self, *args: Any, **kwargs: Any) -> Callable[..., Any]:
        response = self.response

        def call(request: Any, timeout: Any = None, metadata: Any = None, **_: Any) -> Any:
            return response

        return call

    unary_unary = unary_stream = stream_unary = stream_stream = _constant

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        pass

    def unsubscribe(self, callback: Any) -> None:
        pass

    def close(self) -> None:
        pass


def measure_in_process(settings: Settings, request: Any, plan: OverheadPlan) -> dict[str, Any]:
    """Nanoseconds per call, best of ``inproc_repeat``, with no network at all."""
    response = cache_pb2.GetResp(value=VALUE)
    kind = CallKind.UNARY_UNARY

    def constant(call: Call) -> Any:
        return response

    factory = ChainFactory(settings, "client", target="bench")
    chain = factory.build(METHOD, kind, constant, idempotent=True)
    specs = factory.specs(METHOD)
    if len(factory.middleware[METHOD]) != len(specs):
        raise RuntimeError(f"the in-process chain lost middleware: built "
                           f"{factory.middleware[METHOD]} from {specs}")
    channel = ResilientChannel(_ConstantChannel(response),
                               ChainFactory(settings, "client", target="bench"))
    stub_get = cache_pb2_grpc.CacheServiceStub(channel).Get
    inner = _ConstantChannel(response)._constant()
    retrying = _tenacity_retrying()
    breaker = _tenacity_breaker()
    names = {
        "bare_call": "inner(request)",
        "chain": "chain(Call(method, kind, 'client', request))",
        "chain_stub": "stub_get(request)",
        "tenacity": "retrying(breaker.call, inner, request, timeout=1.0)",
        "pybreaker_call": "breaker.call(inner, request, timeout=1.0)",
    }
    namespace = {
        "inner": inner, "chain": chain, "Call": Call, "method": METHOD, "kind": kind,
        "request": request, "stub_get": stub_get, "retrying": retrying, "breaker": breaker,
    }
    best: dict[str, float] = {name: float("inf") for name in names}
    for _ in range(plan.inproc_repeat):  # interleaved, like the latency rounds
        for name, stmt in names.items():
            seconds = timeit.Timer(stmt, globals=namespace).timeit(plan.inproc_number)
            best[name] = min(best[name], seconds * 1e9 / plan.inproc_number)
    base = best["bare_call"]
    return {
        "number": plan.inproc_number,
        "repeat": plan.inproc_repeat,
        "ns_per_call": best,
        "overhead_ns": {n: v - base for n, v in best.items() if n != "bare_call"},
        "what": {
            "bare_call": "a function returning a constant",
            "chain": "the default chain over that function, a Call built per call",
            "chain_stub": "a stub on a ResilientChannel over a constant channel: "
            "Call, chain and terminal, as a real client call runs them",
            "tenacity": "tenacity Retrying + pybreaker call() around that function",
            "pybreaker_call": "pybreaker call() alone around that function",
        },
    }


def _run_threads(get: Get, request: Any, threads: int, seconds: float, max_calls: int
                 ) -> tuple[int, int, float]:
    """(calls, errors, elapsed seconds) for ``threads`` threads calling for ``seconds``."""
    barrier = threading.Barrier(threads + 1)
    calls = [0] * threads
    errors = [0] * threads
    ends = [0.0] * threads
    stop_at = [0.0]

    def worker(i: int) -> None:
        barrier.wait()
        clock = time.perf_counter
        deadline = stop_at[0]
        n = failed = 0
        while n < max_calls and clock() < deadline:
            n += 1
            try:
                get(request)
            except grpc.RpcError:
                failed += 1
        calls[i] = n
        errors[i] = failed
        ends[i] = clock()

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    start = time.perf_counter()
    stop_at[0] = start + seconds
    barrier.wait()
    for thread in pool:
        thread.join(seconds + 60)
    if any(thread.is_alive() for thread in pool):
        raise RuntimeError("throughput workers did not finish")
    return sum(calls), sum(errors), max(ends) - start


def measure_throughput(clients: Clients, request: Any, plan: OverheadPlan) -> dict[str, Any]:
    """Calls per second with ``throughput_workers`` threads sharing one channel per client."""
    names = list(clients.throughput)
    threads, seconds = plan.throughput_workers, plan.throughput_seconds
    for name in names:  # warm up every client under concurrency
        _run_threads(clients.throughput[name], request, threads, min(0.2, seconds), 2000)
    totals = {name: [0, 0, 0.0, 0.0] for name in names}
    per_round: dict[str, list[float]] = {name: [] for name in names}
    for round_no in range(plan.throughput_rounds):
        for name in rotated(names, round_no):
            cpu_start = time.process_time()
            calls, errors, elapsed = _run_threads(
                clients.throughput[name], request, threads, seconds, plan.throughput_max_calls
            )
            totals[name][3] += time.process_time() - cpu_start
            totals[name][0] += calls
            totals[name][1] += errors
            totals[name][2] += elapsed
            per_round[name].append(calls / elapsed)
    rate = {n: t[0] / t[2] for n, t in totals.items()}
    return {
        "threads": threads,
        "seconds_per_measurement": seconds,
        "rounds": plan.throughput_rounds,
        "calls_per_s": rate,
        "errors": {n: int(t[1]) for n, t in totals.items()},
        "client_cpu_us_per_call": {n: t[3] * 1e6 / max(1, t[0]) for n, t in totals.items()},
        "ratio": {n: rate[n] / rate["bare"] for n in names if n != "bare"},
        "round_ratio_median": {
            n: statistics.median(
                r / b for r, b in zip(per_round[n], per_round["bare"], strict=True)
            )
            for n in names
            if n != "bare"
        },
    }


def judge(results: dict[str, Any]) -> dict[str, Any]:
    """The targets, each with its figure and whether it was met."""
    latency = results["latency"]["round_ratio_median"]["chain"]
    throughput = results["throughput"]["round_ratio_median"]["chain"]
    # The chain's Timeout gives every call a deadline, which costs grpcio itself; against
    # a bare call with the same deadline the figures show what the chain alone adds.
    lat_t = latency / results["latency"]["round_ratio_median"]["bare_timeout"]
    tput_t = throughput / results["throughput"]["round_ratio_median"]["bare_timeout"]
    inproc = results["in_process"]["ns_per_call"]
    lat_us = results["latency"]["median_us"]
    return {
        **ratio_targets(latency, throughput, lat_t, tput_t),
        "cheaper_than_tenacity": {
            "value": {
                "in_process_ns": [inproc["chain_stub"], inproc["tenacity"]],
                "latency_us": [lat_us["chain"], lat_us["tenacity"]],
            },
            "target": "chain below tenacity + pybreaker, in process and in latency",
            "passed": inproc["chain_stub"] < inproc["tenacity"]
            and lat_us["chain"] < lat_us["tenacity"],
        },
    }


# --- report ------------------------------------------------------------------------------


def report(results: dict[str, Any], stdout: TextIO | None = None) -> None:
    lat, inproc, tput = results["latency"], results["in_process"], results["throughput"]
    out = OverheadReport("chain overhead", results["quick"], {
        "bare": "bare", "bare_timeout": "bare, timeout=1", "chain": "chain",
        "tenacity": "tenacity+pybreaker", "pybreaker_call": "pybreaker call()",
    }, base="bare")
    out.latency(lat)
    out.case(f"Dump stream of {results['stream']['items']}", results["stream"])
    out.case("Get.future().result()", results["future"])
    out.in_process("in-process ns/call", inproc["ns_per_call"],
                   ("bare_call", "-", "chain_stub", "tenacity", "pybreaker_call"))
    out.throughput(tput, f"{tput['threads']} threads")
    out.print(results, stdout)


# --- entry points ------------------------------------------------------------------------


def run(
    *, quick: bool = False, stdout: TextIO | None = None, output: Path | None = None
) -> dict[str, Any]:
    """Measure, print a table to ``stdout`` and return the figures.

    A full run writes them to ``benchmarks/results/chain_overhead.json`` (or ``output``);
    a quick run writes only to ``output``, if given, so it never replaces full figures.
    """
    plan = QUICK if quick else FULL
    began = time.perf_counter()
    settings = bench_settings(CLIENT_MIDDLEWARE=DEFAULT_CLIENT_MIDDLEWARE)
    request = cache_pb2.GetReq(key=KEY)
    results: dict[str, Any] = {
        **header(NAME, quick, plan, "pybreaker", "tenacity"),
        "method": METHOD,
        "client_chain": DEFAULT_CLIENT_MIDDLEWARE,
    }
    results["in_process"] = measure_in_process(settings, request, plan)
    with server_process() as address:
        clients = Clients(address, settings)
        try:
            for key in (KEY, *STREAM_KEYS):
                clients.store(cache_pb2.StoreReq(key=key, value=VALUE), timeout=10)
            gc.collect()
            results["latency"] = measure_latency(clients.latency, request, plan)
            gc.collect()
            results["stream"] = measure_stream(clients, plan)
            gc.collect()
            results["future"] = measure_future(clients, request, plan)
            gc.collect()
            results["throughput"] = measure_throughput(clients, request, plan)
        finally:
            clients.close()
    results["targets"] = judge(results)
    return finish(results, began, RESULTS, report, quick, stdout, output)


def main(argv: list[str] | None = None) -> int:
    return cli(argv, NAME, __doc__, run, RESULTS)


if __name__ == "__main__":
    sys.exit(main())
