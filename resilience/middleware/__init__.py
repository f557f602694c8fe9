"""The built-in middleware, importable by short dotted path: ``resilience.middleware.Retry``."""

from resilience.middleware.adaptive import AdaptiveLimit
from resilience.middleware.breaker import CircuitBreaker
from resilience.middleware.bulkhead import Bulkhead
from resilience.middleware.concurrency import ConcurrencyLimit
from resilience.middleware.fallback import Fallback
from resilience.middleware.faults import FaultInjection
from resilience.middleware.hedging import Hedging
from resilience.middleware.logging import RequestLogging
from resilience.middleware.ratelimit import RateLimit
from resilience.middleware.retry import Retry
from resilience.middleware.timeout import Timeout

__all__ = [
    "AdaptiveLimit",
    "Bulkhead",
    "CircuitBreaker",
    "ConcurrencyLimit",
    "Fallback",
    "FaultInjection",
    "Hedging",
    "RateLimit",
    "RequestLogging",
    "Retry",
    "Timeout",
]
