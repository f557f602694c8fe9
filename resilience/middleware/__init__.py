"""The built-in middleware, importable by short dotted path: ``resilience.middleware.Retry``."""

from resilience.middleware.adaptive import AdaptiveLimit
from resilience.middleware.auth import BearerToken, TokenAuth
from resilience.middleware.breaker import CircuitBreaker
from resilience.middleware.bulkhead import Bulkhead
from resilience.middleware.concurrency import ConcurrencyLimit
from resilience.middleware.context import RequestContext
from resilience.middleware.fallback import Fallback
from resilience.middleware.faults import FaultInjection
from resilience.middleware.hedging import Hedging
from resilience.middleware.logging import RequestLogging
from resilience.middleware.metrics import Metrics
from resilience.middleware.ratelimit import RateLimit
from resilience.middleware.retry import Retry
from resilience.middleware.timeout import Timeout

__all__ = [
    "AdaptiveLimit",
    "BearerToken",
    "Bulkhead",
    "CircuitBreaker",
    "ConcurrencyLimit",
    "Fallback",
    "FaultInjection",
    "Hedging",
    "Metrics",
    "RateLimit",
    "RequestContext",
    "RequestLogging",
    "Retry",
    "Timeout",
    "TokenAuth",
]
