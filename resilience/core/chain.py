"""Compose middleware into one handler, Django's ``load_middleware`` in a few lines."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from resilience.core.call import CallKind, Side
from resilience.core.errors import ImproperlyConfigured, MiddlewareNotUsed
from resilience.core.middleware import ChainInfo, Handler, Middleware, MiddlewareOptions


@dataclasses.dataclass(frozen=True)
class MiddlewareSpec:
    """One resolved entry of a chain: the class from its dotted path, and its options."""

    path: str
    factory: type[Middleware]
    name: str
    options: MiddlewareOptions


def build_chain(
    specs: Sequence[MiddlewareSpec],
    terminal: Handler,
    *,
    method: str,
    kind: CallKind,
    side: Side,
    shared: dict[str, Any],
    target: str = "",
) -> tuple[Handler, list[Middleware]]:
    """Wrap ``terminal`` inside-out, so the first spec is outermost and called first.

    Returns the handler and the middleware instances that took part, outermost first.
    """
    handler = terminal
    used: list[Middleware] = []
    for spec in reversed(specs):
        info = ChainInfo(method, kind, side, spec.name, shared, target)
        try:
            instance = spec.factory(handler, spec.options, info)
        except MiddlewareNotUsed:
            continue
        if instance is None:
            raise ImproperlyConfigured(f"middleware '{spec.path}' returned None when built")
        handler = instance
        used.append(instance)
    used.reverse()
    return handler, used
