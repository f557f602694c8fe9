"""The Prometheus implementation of ``resilience.core.recorder.Recorder``, bound to one
method and side when a chain is built.

The Metrics middleware gets its per-call ``RpcSeries`` from ``rpc()``. ``recorder_for``
hands a chain ``NULL_RECORDER`` (core's) when metrics are off: every method does nothing
and no collector is ever created.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pybreaker

from resilience.core.call import CallKind
from resilience.core.recorder import NULL_RECORDER, NullRecorder

if TYPE_CHECKING:
    from prometheus_client.metrics import Counter

    from resilience.metrics.collectors import Collectors
    from resilience.metrics.rpc import RpcSeries


def _fast_inc(child: Counter) -> Callable[[float], None]:
    """``child.inc`` without prometheus_client's per-call checks (about half its cost):
    the child's value holder's own ``inc``, when the installed version has one."""
    value = getattr(child, "_value", None)
    return value.inc if value is not None and hasattr(value, "inc") else child.inc


class _BreakerListener(pybreaker.CircuitBreakerListener):
    """Counts a breaker's state changes."""

    def __init__(self, recorder: PrometheusRecorder) -> None:
        self._recorder = recorder

    def state_change(self, cb: pybreaker.CircuitBreaker,
                     old_state: pybreaker.CircuitBreakerState | None,
                     new_state: pybreaker.CircuitBreakerState) -> None:
        if old_state is not None and old_state.name != new_state.name:
            self._recorder.transition(old_state.name, new_state.name)


class PrometheusRecorder:
    """Records one method's events on one side; labels are fixed here, once, and each
    counter's child is bound on its first event, so an event costs one increment."""

    enabled = True

    def __init__(self, side: str, method: str, collectors: Collectors | None = None) -> None:
        if collectors is None:
            from resilience.metrics.collectors import collectors as default

            collectors = default()
        self.side = side
        self.method = method
        self.c = collectors
        service, _, name = method.partition("/")
        self._labels = (side, service, name)
        self._incs: dict[tuple[str, ...], Callable[[float], None]] = {}

    def rpc(self, kind: CallKind) -> RpcSeries:
        """The grpc_* metrics of this method, for the Metrics middleware."""
        rpc = self.c.server if self.side == "server" else self.c.client
        return rpc.series(kind, self.method)

    def _inc(self, key: tuple[str, ...]) -> None:
        """Add one to the counter ``key[0]`` (a ``Collectors`` field) with the extra label
        values ``key[1:]``."""
        inc = self._incs.get(key)
        if inc is None:
            counter: Counter = getattr(self.c, key[0])
            inc = self._incs.setdefault(key, _fast_inc(counter.labels(*self._labels, *key[1:])))
        inc(1)

    def retry(self) -> None:
        self._inc(("retries",))

    def hedge(self) -> None:
        self._inc(("hedges",))

    def rejected(self, reason: str) -> None:
        """A local rejection: throttle, rate_limit, bulkhead, breaker_open or adaptive_limit."""
        self._inc(("rejections", reason))

    def fault(self, kind: str) -> None:
        self._inc(("faults", kind))

    def fallback(self) -> None:
        self._inc(("fallbacks",))

    def transition(self, from_state: str, to_state: str) -> None:
        self._inc(("breaker_transitions", from_state, to_state))

    def watch_limiter(self, limiter: str, limit: Callable[[], float],
                      in_flight: Callable[[], float]) -> None:
        """Read a limiter's limit and in-flight count at scrape time: nothing per call."""
        self.c.limiter_limit.labels(*self._labels, limiter).set_function(limit)
        self.c.limiter_in_flight.labels(*self._labels, limiter).set_function(in_flight)

    def watch_breaker(self, breaker: pybreaker.CircuitBreaker) -> None:
        """Read the breaker's state at scrape time and count its transitions."""
        from resilience.metrics.collectors import BREAKER_STATES

        self.c.breaker_state.labels(*self._labels).set_function(
            lambda: BREAKER_STATES.get(breaker.current_state, 0)
        )
        breaker.add_listener(_BreakerListener(self))


def recorder_for(settings: Any, side: str, method: str) -> PrometheusRecorder | NullRecorder:
    """The recorder of ``method``'s chain on ``side``: ``NULL_RECORDER`` when metrics are
    off (``METRICS_ENABLED``), so that nothing is registered or counted."""
    if not getattr(settings, "METRICS_ENABLED", False):
        return NULL_RECORDER
    return PrometheusRecorder(side, method)
