"""Adaptive concurrency limit algorithms, by settings name.

Each is a small pure object (see ``resilience.limits.base.Limit``) built as
``ALGORITHMS[name](options, clock)`` with options from ``build_options(cls.Options, ...)``.
The algorithms and their defaults follow Netflix's concurrency-limits library; see
docs/adaptive-limits.md for the update rules.
"""

from __future__ import annotations

from resilience.limits.aimd import AIMDLimit
from resilience.limits.base import Limit, LimitOptions, log10_int
from resilience.limits.fixed import FixedLimit
from resilience.limits.gradient2 import Gradient2Limit
from resilience.limits.vegas import VegasLimit

ALGORITHMS: dict[str, type[FixedLimit | AIMDLimit | VegasLimit | Gradient2Limit]] = {
    "fixed": FixedLimit,
    "aimd": AIMDLimit,
    "vegas": VegasLimit,
    "gradient2": Gradient2Limit,
}

__all__ = [
    "ALGORITHMS",
    "AIMDLimit",
    "FixedLimit",
    "Gradient2Limit",
    "Limit",
    "LimitOptions",
    "VegasLimit",
    "log10_int",
]
