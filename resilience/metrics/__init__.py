"""Prometheus metrics: go-grpc-prometheus's RPC metrics and the resilience layers' events.

Nothing here touches prometheus_client's registry until metrics are enabled and a chain
asks for a ``PrometheusRecorder``: with ``METRICS_ENABLED = false`` every chain gets
``NULL_RECORDER`` and no collector is ever created. The recorder (and pybreaker, which it
listens to) is imported on first use, so the Metrics middleware's own import of
``resilience.metrics.rpc`` does not bring it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from resilience.metrics.recorder import (
        NULL_RECORDER,
        NullRecorder,
        PrometheusRecorder,
        recorder_for,
    )

__all__ = ["NULL_RECORDER", "NullRecorder", "PrometheusRecorder", "recorder_for"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module("resilience.metrics.recorder"), name)
