"""Compose middleware into one handler, Django's ``load_middleware`` in a few lines."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from resilience.core.adapters import adapt_sync
from resilience.core.call import CallKind, Side
from resilience.core.errors import ImproperlyConfigured, MiddlewareNotUsed
from resilience.core.middleware import ChainInfo, Handler, Middleware, MiddlewareOptions
from resilience.core.recorder import NULL_RECORDER, NullRecorder, Recorder


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
    is_async: bool = False,
    idempotent: bool = False,
    metrics: Recorder | NullRecorder = NULL_RECORDER,
    left_out: dict[str, str] | None = None,
) -> tuple[Handler, list[Middleware]]:
    """Wrap ``terminal`` inside-out, so the first spec is outermost and called first.

    In an asyncio chain each middleware contributes its ``acall``, or, if it is sync-only,
    an adapter that runs it in a worker thread. Returns the handler and the middleware
    instances that took part, outermost first. ``metrics`` is the method's recorder on
    this side, handed to every middleware in ``ChainInfo.metrics``. ``left_out``, if
    given, receives each path that raised ``MiddlewareNotUsed`` with its reason, so that
    ``showchain`` can say why a middleware is not in a chain.
    """
    handler = terminal
    used: list[Middleware] = []
    for spec in reversed(specs):
        info = ChainInfo(
            method, kind, side, spec.name, shared, target, is_async, idempotent, metrics
        )
        factory = spec.factory
        if not (factory.sync_capable or (is_async and factory.async_capable)):
            mode = "asyncio" if is_async else "sync"
            raise ImproperlyConfigured(f"middleware '{spec.path}' cannot run in {mode} mode")
        try:
            if is_async and not factory.async_capable:
                handler, instance = adapt_sync(factory, handler, spec.options, info)
            else:
                instance = factory(handler, spec.options, info)
                # The bound method, not the instance: calling an instance goes through its
                # type's __call__ slot on every call, a bound method does not.
                handler = instance.acall if is_async else instance.__call__
        except MiddlewareNotUsed as exc:
            if left_out is not None:
                left_out[spec.path] = str(exc)
            continue
        used.append(instance)
    used.reverse()
    return handler, used
