"""The metric objects, created once per process on prometheus_client's default registry,
so that an exposition the user already runs picks them up.

The RPC metrics use go-grpc-prometheus's names and labels (``grpc_type``,
``grpc_service``, ``grpc_method``, ``grpc_code``) so that existing dashboards work; they
are counted per call, so they are a collector of their own (``resilience.metrics.rpc``)
that adds up plain numbers when scraped. The resilience metrics add ``side`` because one
process may be client and server at once.
"""

from __future__ import annotations

import dataclasses
import threading

from prometheus_client import REGISTRY, Counter, Gauge

from resilience.metrics.rpc import RpcCollector

EVENT_LABELS = ("side", "grpc_service", "grpc_method")
#: Values of resilience_breaker_state.
BREAKER_STATES = {"closed": 0, "open": 1, "half-open": 2}
#: Values of the ``reason`` label of resilience_rejections_total.
REJECTION_REASONS = ("throttle", "rate_limit", "bulkhead", "breaker_open", "adaptive_limit")


@dataclasses.dataclass(frozen=True)
class Collectors:
    """Every metric the framework exports."""

    server: RpcCollector
    client: RpcCollector
    retries: Counter
    hedges: Counter
    breaker_state: Gauge
    breaker_transitions: Counter
    limiter_limit: Gauge
    limiter_in_flight: Gauge
    rejections: Counter
    faults: Counter
    fallbacks: Counter


def _register(collector: RpcCollector) -> RpcCollector:
    REGISTRY.register(collector)
    return collector


def _create() -> Collectors:
    return Collectors(
        server=_register(RpcCollector("server")),
        client=_register(RpcCollector("client")),
        retries=Counter(
            "resilience_retries_total", "Retry attempts sent (attempts after the first).",
            EVENT_LABELS,
        ),
        hedges=Counter(
            "resilience_hedges_total", "Hedged attempts sent (attempts after the first).",
            EVENT_LABELS,
        ),
        breaker_state=Gauge(
            "resilience_breaker_state", "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
            EVENT_LABELS,
        ),
        breaker_transitions=Counter(
            "resilience_breaker_transitions_total", "Circuit breaker state changes.",
            (*EVENT_LABELS, "from_state", "to_state"),
        ),
        limiter_limit=Gauge(
            "resilience_limiter_limit", "A concurrency limiter's current limit.",
            (*EVENT_LABELS, "limiter"),
        ),
        limiter_in_flight=Gauge(
            "resilience_limiter_in_flight", "Calls a concurrency limiter holds in flight.",
            (*EVENT_LABELS, "limiter"),
        ),
        rejections=Counter(
            "resilience_rejections_total",
            "Calls rejected locally, by reason: " + ", ".join(REJECTION_REASONS) + ".",
            (*EVENT_LABELS, "reason"),
        ),
        faults=Counter(
            "resilience_faults_injected_total", "Faults injected by FaultInjection, by kind.",
            (*EVENT_LABELS, "fault"),
        ),
        fallbacks=Counter(
            "resilience_fallbacks_total", "Calls answered by a fallback instead of an error.",
            EVENT_LABELS,
        ),
    )


_collectors: Collectors | None = None
_lock = threading.Lock()


def collectors() -> Collectors:
    """The process's collectors, registered on ``REGISTRY`` on first use only."""
    global _collectors
    if _collectors is None:
        with _lock:
            if _collectors is None:
                _collectors = _create()
    return _collectors


def registered() -> bool:
    """Have the collectors been created (and so registered) in this process?"""
    return _collectors is not None

