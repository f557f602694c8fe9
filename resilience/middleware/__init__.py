"""The built-in middleware, importable by short dotted path: ``resilience.middleware.Retry``."""

from resilience.middleware.breaker import CircuitBreaker
from resilience.middleware.concurrency import ConcurrencyLimit
from resilience.middleware.logging import RequestLogging
from resilience.middleware.retry import Retry
from resilience.middleware.timeout import Timeout

__all__ = ["CircuitBreaker", "ConcurrencyLimit", "RequestLogging", "Retry", "Timeout"]
