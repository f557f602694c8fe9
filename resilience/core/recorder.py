"""What a middleware calls to record an event: the ``Recorder`` protocol, and the recorder
of a chain whose metrics are off.

A recorder is bound to one method and side when its chain is built
(``ChainInfo.metrics``), so the call site passes no labels, and it is called on the
event's own path only (a retry, a rejection, a fallback), never on a call's happy path.
The protocol lives here, under the middleware, so that they record without importing
the Prometheus implementation (``resilience.metrics.recorder.PrometheusRecorder``), which
the composition root picks (``recorder_for``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from resilience.core.call import CallKind


class Recorder(Protocol):
    """One method's events on one side. ``enabled`` is false for ``NULL_RECORDER``, whose
    chain records nothing; ``rpc`` is asked of an enabled recorder only (the Metrics
    middleware leaves a chain whose recorder is not)."""

    enabled: bool

    def retry(self) -> None: ...

    def hedge(self) -> None: ...

    def rejected(self, reason: str) -> None:
        """A local rejection: throttle, rate_limit, bulkhead, breaker_open or adaptive_limit."""

    def fault(self, kind: str) -> None: ...

    def fallback(self) -> None: ...

    def watch_limiter(self, limiter: str, limit: Callable[[], float],
                      in_flight: Callable[[], float]) -> None:
        """Read a limiter's limit and in-flight count at scrape time: nothing per call."""

    def watch_breaker(self, breaker: Any) -> None:
        """Follow a ``pybreaker.CircuitBreaker``: its state, and its transitions."""

    def rpc(self, kind: CallKind) -> Any:
        """The method's per-call series, for the Metrics middleware."""


class NullRecorder:
    """The recorder of a chain whose metrics are off: nothing is recorded."""

    __slots__ = ()
    enabled = False

    def retry(self) -> None:
        pass

    def hedge(self) -> None:
        pass

    def rejected(self, reason: str) -> None:
        pass

    def fault(self, kind: str) -> None:
        pass

    def fallback(self) -> None:
        pass

    def watch_limiter(self, limiter: str, limit: Callable[[], float],
                      in_flight: Callable[[], float]) -> None:
        pass

    def watch_breaker(self, breaker: Any) -> None:
        pass


NULL_RECORDER = NullRecorder()
