"""The composition root: the one place chains are built, for every caller alike.

A ``ChainFactory`` is made once per channel (client) or per server, from settings, for a
side, a mode and a target. It owns what the chains of that channel or server share (the
``shared`` dict: the settings, the retry budget, Redis connections, executors), gives each
chain its metrics recorder, its method's idempotency and the class each option set chooses
(``Middleware.variants``: the Redis breaker and limit), and keeps the middleware each
chain is made of. ``connect``, ``aio_connect``, both servers, the plain interceptors and
``showchain`` all build through it, so none can build a chain another would not.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

from resilience.conf.chains import ChainResolver, MiddlewareSpec
from resilience.conf.settings import Settings
from resilience.core.call import CallKind, Side
from resilience.core.chain import build_chain
from resilience.core.errors import ImproperlyConfigured
from resilience.core.loading import variant_for
from resilience.core.middleware import Handler, Middleware
from resilience.metrics.recorder import recorder_for


class ChainFactory:
    """Builds the chains of one channel or server; ``middleware`` maps each method built
    so far to its chain's middleware, outermost first."""

    def __init__(self, settings: Settings, side: Side, *, is_async: bool = False,
                 target: str = "") -> None:
        self.settings = settings
        self.side = side
        self.is_async = is_async
        self.target = target
        self.resolver = ChainResolver(settings, is_async=is_async)
        self.shared: dict[str, Any] = {"settings": settings}
        self.middleware: dict[str, list[Middleware]] = {}
        self._lock = threading.Lock()

    def specs(self, method: str) -> list[MiddlewareSpec]:
        """The resolved chain of ``method``; its errors, if any, as ImproperlyConfigured."""
        specs = self.resolver.resolve(self.side, method)
        if errors := [p for p in self.resolver.problems if p.is_error]:
            raise ImproperlyConfigured(
                f"{self.side} chain for {method}: {'; '.join(p.msg for p in errors)}"
            )
        return specs

    def build(self, method: str, kind: CallKind, terminal: Handler, *,
              idempotent: bool | None = None,
              left_out: dict[str, str] | None = None) -> Handler:
        """``method``'s chain around ``terminal``. ``idempotent`` overrides what settings
        and the default descriptor pool say (a proto in a pool of its own); ``left_out``
        collects the middleware that left the chain, with their reasons. Each spec is
        built as the class its options choose (``variant_for``: CircuitBreaker's
        ``storage = "redis"`` is the Redis breaker)."""
        specs = [dataclasses.replace(spec, factory=variant_for(spec.factory, spec.options))
                 for spec in self.specs(method)]
        if idempotent is None:
            idempotent = self.resolver.is_idempotent(method)
        with self._lock:
            chain, used = build_chain(
                specs, terminal, method=method, kind=kind, side=self.side,
                shared=self.shared, target=self.target, is_async=self.is_async,
                idempotent=idempotent, metrics=recorder_for(self.settings, self.side, method),
                left_out=left_out,
            )
            self.middleware[method] = used
        return chain
