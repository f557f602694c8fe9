"""Serve the default registry over HTTP for Prometheus to scrape."""

from __future__ import annotations

import dataclasses

import structlog
from prometheus_client import start_http_server

from resilience.conf.addresses import http_address_problem, parse_host_port
from resilience.core.errors import ImproperlyConfigured

log = structlog.get_logger(__name__)


@dataclasses.dataclass
class MetricsEndpoint:
    """A running endpoint: where it listens; ``stop()`` shuts it down."""

    host: str
    port: int
    server: object

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def stop(self) -> None:
        self.server.shutdown()  # type: ignore[attr-defined]
        self.server.server_close()  # type: ignore[attr-defined]


def serve_metrics(address: str, setting: str = "METRICS_SERVER_ADDRESS") -> MetricsEndpoint:
    """Start serving ``/metrics`` at ``address`` ("HOST:PORT"; port 0 picks a free one) on a
    daemon thread and return the endpoint with the bound port. ``setting`` names where the
    address came from, for the error message."""
    # Imported for its side effect: the collectors exist (at zero) before the first scrape.
    from resilience.metrics.collectors import collectors

    collectors()
    problem = http_address_problem(address)
    if problem:  # the check of METRICS_*_ADDRESS, for callers that did not run check
        raise ImproperlyConfigured(f"{setting} is {address!r}; {problem}")
    host = address.rpartition(":")[0]
    parsed = parse_host_port(address, port_zero=True)
    try:
        server, _thread = start_http_server(parsed.port, addr=parsed.host)
    except OSError as exc:
        raise ImproperlyConfigured(
            f"cannot serve metrics on {address} ({setting}): {exc.strerror or exc}; choose "
            f"another port or set METRICS_ENABLED = false"
        ) from None
    endpoint = MetricsEndpoint(host, server.server_port, server)
    log.info("metrics_serving", url=endpoint.url)
    return endpoint
