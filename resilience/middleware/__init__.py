"""The built-in middleware, importable by short dotted path: ``resilience.middleware.Retry``.

Each class is imported on first use (PEP 562), so ``import resilience.middleware`` loads
none of them and a chain pays for what it lists: CircuitBreaker brings pybreaker (which
imports redis when it is installed), Metrics brings prometheus_client, the rest neither.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

#: Each built-in's module in this package.
_MODULES = {
    "AdaptiveLimit": "adaptive",
    "BearerToken": "auth",
    "Bulkhead": "bulkhead",
    "CircuitBreaker": "breaker",
    "ConcurrencyLimit": "concurrency",
    "Fallback": "fallback",
    "FaultInjection": "faults",
    "Hedging": "hedging",
    "Metrics": "metrics",
    "RateLimit": "ratelimit",
    "RequestContext": "context",
    "RequestLogging": "logging",
    "Retry": "retry",
    "Timeout": "timeout",
    "TokenAuth": "auth",
}

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


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # the next lookup is an ordinary one
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
