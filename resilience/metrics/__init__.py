"""Prometheus metrics: go-grpc-prometheus's RPC metrics and the resilience layers' events.

Nothing here touches prometheus_client's registry until metrics are enabled and a chain
asks for a ``PrometheusRecorder``: with ``METRICS_ENABLED = false`` every chain gets
``NULL_RECORDER`` and no collector is ever created.
"""

from resilience.metrics.recorder import (
    NULL_RECORDER,
    NullRecorder,
    PrometheusRecorder,
    recorder_for,
)

__all__ = ["NULL_RECORDER", "NullRecorder", "PrometheusRecorder", "recorder_for"]
