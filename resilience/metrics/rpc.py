"""go-grpc-prometheus's RPC metrics, counted in plain Python numbers and turned into
Prometheus samples only when scraped.

prometheus_client's ``Counter.inc`` and ``Histogram.observe`` take a lock per value and
check their arguments on every call (about 3 µs a call and side for the five metrics);
here a call adds to a few ``int`` and ``float`` slots of its thread's own ``Shard``
instead, and the ``RpcCollector`` sums the shards when scraped. Each shard has a single
writer, the thread that owns it, so ``+=`` cannot lose an update to another thread (nor to
a finalizer in the same thread: an ``int`` or ``float`` allocation never starts the cyclic
garbage collector); a thread's shard is handed to a new thread only once the old one has
ended, so the number of shards stays the number of threads alive at once. The samples are
exactly those the prometheus_client metrics would produce: names, help, labels, values
and ``_created``.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator

import grpc
from prometheus_client import Histogram
from prometheus_client import metrics as _prometheus_metrics
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import INF, floatToGoString

from resilience.core.call import CallKind

RPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")
#: go-grpc-prometheus's ``grpc_type`` per call kind.
GRPC_TYPES = {
    CallKind.UNARY_UNARY: "unary",
    CallKind.UNARY_STREAM: "server_stream",
    CallKind.STREAM_UNARY: "client_stream",
    CallKind.STREAM_STREAM: "bidi_stream",
}
#: Upper bounds of grpc_*_handling_seconds: prometheus_client's defaults, +Inf implied.
BOUNDS: tuple[float, ...] = tuple(b for b in Histogram.DEFAULT_BUCKETS if b != INF)
_LE = tuple(floatToGoString(b) for b in (*BOUNDS, INF))
#: ``BOUNDS[0]``: most calls take less, and a comparison is cheaper than a bisection.
FIRST_BOUND = BOUNDS[0]
#: Every status code, at its numeric value (OK is 0).
CODES: tuple[grpc.StatusCode, ...] = tuple(sorted(grpc.StatusCode, key=lambda c: c.value[0]))
#: A code's index in ``CODES`` by the code's id: hashing an Enum runs Python code.
CODE_INDEX: dict[int, int] = {id(code): i for i, code in enumerate(CODES)}
OK = 0

_clock = time.perf_counter


def _use_created() -> bool:
    """Does prometheus_client export ``_created`` samples (PROMETHEUS_DISABLE_CREATED_SERIES,
    ``disable_created_metrics()``)?"""
    return bool(getattr(_prometheus_metrics, "_use_created", True))


class Shard:
    """One thread's counts of one method on one side. Only its owner thread writes it."""

    __slots__ = ("buckets", "handled", "requests", "responses", "started", "sum", "timed_ok")

    def __init__(self) -> None:
        self.started = 0
        #: Finished calls by code, except those in ``timed_ok``.
        self.handled = [0] * len(CODES)
        #: OK calls observed by the Metrics middleware's fast path, by bucket: one slot
        #: counts both the handled call and its observation.
        self.timed_ok = [0] * (len(BOUNDS) + 1)
        #: Every other observation, by bucket (not cumulative).
        self.buckets = [0] * (len(BOUNDS) + 1)
        self.sum = 0.0
        #: Stream messages; a unary request is counted by ``started``, a unary response by
        #: the OK calls, exactly as the two always move together.
        self.requests = 0
        self.responses = 0


class _Release:
    """Kept in a thread's local storage: when the thread ends, its shard goes back to the
    pool for the next new thread (its counts stay in, so nothing is lost)."""

    __slots__ = ("free", "shard")

    def __init__(self, free: list[Shard], shard: Shard) -> None:
        self.free = free
        self.shard = shard

    def __del__(self) -> None:
        self.free.append(self.shard)


class RpcSeries:
    """One label set (grpc_type, grpc_service, grpc_method) of one side's five metrics.

    The Metrics middleware gets it when its chain is built and, per call, adds to
    ``shard()`` (``local.shard`` read directly on the fast path).
    """

    __slots__ = ("_collector", "_free", "_shards", "created", "handled_created", "labels",
                 "local", "request_streaming", "response_streaming")

    def __init__(self, collector: RpcCollector, kind: CallKind, service: str, method: str
                 ) -> None:
        self._collector = collector
        self.labels = (GRPC_TYPES[kind], service, method)
        self.request_streaming = kind.request_streaming
        self.response_streaming = kind.response_streaming
        self.created = time.time()
        #: When each code's grpc_*_handled_total series appeared (None: not yet).
        self.handled_created: list[float | None] = [None] * len(CODES)
        self.local = threading.local()
        self._shards: list[Shard] = []
        self._free: list[Shard] = []

    def shard(self) -> Shard:
        """The calling thread's shard."""
        try:
            return self.local.shard  # type: ignore[no-any-return]
        except AttributeError:
            return self.adopt()

    def adopt(self) -> Shard:
        """Give the calling thread a shard: one a finished thread left, or a new one."""
        try:
            shard = self._free.pop()
        except IndexError:
            shard = Shard()
            self._shards.append(shard)
        self.local.shard = shard
        self.local.release = _Release(self._free, shard)
        return shard

    def start(self) -> Shard:
        """Count a started call; returns the thread's shard."""
        shard = self.shard()
        shard.started += 1
        return shard

    def first_use(self, index: int) -> None:
        """Create the handled series of ``CODES[index]`` (its ``_created`` and its place)."""
        self._collector.add_handled(self, index)

    def handled(self, code: grpc.StatusCode, started: float | None) -> None:
        """Count one finished call with ``code``; observe its duration if ``started`` (a
        ``time.perf_counter()`` value) is given."""
        index = CODE_INDEX[id(code)]
        if self.handled_created[index] is None:
            self.first_use(index)
        shard = self.shard()
        shard.handled[index] += 1
        if started is not None:
            elapsed = _clock() - started
            shard.buckets[0 if elapsed <= FIRST_BOUND else bisect_left(BOUNDS, elapsed)] += 1
            shard.sum += elapsed

    def count_request(self) -> None:
        """One request stream message."""
        self.shard().requests += 1

    def count_response(self) -> None:
        """One response stream message."""
        self.shard().responses += 1

    def totals(self) -> Shard:
        """Every thread's counts added up, in a new ``Shard`` whose ``handled`` and
        ``buckets`` include ``timed_ok`` and whose messages include unary ones."""
        total = Shard()
        handled, buckets = total.handled, total.buckets
        for shard in tuple(self._shards):
            total.started += shard.started
            total.requests += shard.requests
            total.responses += shard.responses
            total.sum += shard.sum
            for i, n in enumerate(shard.handled):
                handled[i] += n
            for i, (n, ok) in enumerate(zip(shard.buckets, shard.timed_ok, strict=True)):
                buckets[i] += n + ok
                handled[OK] += ok
        if not self.request_streaming:
            total.requests = total.started
        if not self.response_streaming:
            total.responses = handled[OK]
        return total


class RpcCollector(Collector):
    """go-grpc-prometheus's five metrics of one side (``grpc_server_*`` or ``grpc_client_*``)
    as a prometheus_client collector: families, order and samples as prometheus_client's
    own Counter and Histogram objects would export them."""

    def __init__(self, side: str) -> None:
        who = "server" if side == "server" else "client"
        self.side = side
        self._prefix = f"grpc_{side}"
        self._help = {
            "started": f"Total number of RPCs started on the {who}.",
            "handled": f"Total number of RPCs completed on the {who}, regardless of success "
                       f"or failure.",
            "msg_received": f"Total number of RPC stream messages received by the {who}.",
            "msg_sent": f"Total number of gRPC stream messages sent by the {who}.",
            "handling_seconds": f"Histogram of response latency (seconds) of gRPC that had "
                                f"been application-level handled by the {who}.",
        }
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str, str], RpcSeries] = {}
        #: (series, code index) in the order the handled series appeared.
        self._handled: list[tuple[RpcSeries, int]] = []

    def series(self, kind: CallKind, method: str) -> RpcSeries:
        """The series of ``method`` ("package.Service/Method"), created at zero on first use."""
        service, _, name = method.partition("/")
        key = (GRPC_TYPES[kind], service, name)
        series = self._series.get(key)
        if series is None:
            with self._lock:
                series = self._series.get(key)
                if series is None:
                    series = self._series[key] = RpcSeries(self, kind, service, name)
        return series

    def add_handled(self, series: RpcSeries, index: int) -> None:
        with self._lock:
            if series.handled_created[index] is None:
                series.handled_created[index] = time.time()
                self._handled.append((series, index))

    def _families(self) -> tuple[CounterMetricFamily, CounterMetricFamily, CounterMetricFamily,
                                 CounterMetricFamily, HistogramMetricFamily]:
        p, h = self._prefix, self._help
        return (
            CounterMetricFamily(f"{p}_started_total", h["started"], labels=RPC_LABELS),
            CounterMetricFamily(f"{p}_handled_total", h["handled"],
                                labels=(*RPC_LABELS, "grpc_code")),
            CounterMetricFamily(f"{p}_msg_received_total", h["msg_received"],
                                labels=RPC_LABELS),
            CounterMetricFamily(f"{p}_msg_sent_total", h["msg_sent"], labels=RPC_LABELS),
            HistogramMetricFamily(f"{p}_handling_seconds", h["handling_seconds"],
                                  labels=RPC_LABELS),
        )

    def describe(self) -> Iterable[Metric]:
        """The families without samples, for the registry's duplicate-name check."""
        return self._families()

    def collect(self) -> Iterator[Metric]:
        started, handled, received, sent, seconds = self._families()
        created = _use_created()
        with self._lock:
            everything = tuple(self._series.values())
            handled_order = tuple(self._handled)
        totals = {id(series): series.totals() for series in everything}
        client = self.side == "client"
        for series in everything:
            total, labels = totals[id(series)], series.labels
            stamp = series.created if created else None
            started.add_metric(labels, float(total.started), created=stamp)
            received.add_metric(labels, float(total.responses if client else total.requests),
                                created=stamp)
            sent.add_metric(labels, float(total.requests if client else total.responses),
                            created=stamp)
            acc = 0.0
            cumulative = []
            for le, n in zip(_LE, total.buckets, strict=True):
                acc += n
                cumulative.append((le, acc))
            seconds.add_metric(labels, cumulative, total.sum)
            if created:
                seconds.add_sample(f"{seconds.name}_created", dict(zip(RPC_LABELS, labels,
                                                                       strict=True)),
                                   series.created)
        for series, index in handled_order:
            total = totals[id(series)]
            handled.add_metric((*series.labels, CODES[index].name),
                               float(total.handled[index]),
                               created=series.handled_created[index] if created else None)
        yield from (started, handled, received, sent, seconds)

