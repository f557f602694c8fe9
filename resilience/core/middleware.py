"""The middleware contract: one shape for every layer, on both sides of the wire.

A middleware is a class. The loader calls it once per chain with the next handler, its
resolved options and a :class:`ChainInfo`; the instance is then called once per RPC with a
:class:`~resilience.core.call.Call` and returns what the next handler returns (a response,
or an iterator of responses for server-streaming calls).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

from resilience.core.call import Call, CallKind, Side
from resilience.core.recorder import NULL_RECORDER, NullRecorder, Recorder

Handler = Callable[[Call], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class ChainInfo:
    """Where a middleware instance sits: which method, which side, under which options name.

    ``shared`` is one dict per channel (client) or per server, for state that must span
    methods, such as a server-wide concurrency limit. ``target`` is the channel's target on
    the client and the bound address on the server. ``is_async`` says whether the chain
    runs on grpc.aio, so ``__init__`` can prepare the path that will be used.
    ``idempotent`` says whether the method may safely run more than once (its proto's
    ``idempotency_level``, or the IDEMPOTENT_METHODS setting), for Retry and Hedging.
    ``metrics`` records this method's events on this side (``NULL_RECORDER`` when metrics
    are off); it is made with the chain, so a middleware calls it without labels.
    """

    method: str
    kind: CallKind
    side: Side
    name: str
    shared: dict[str, Any]
    target: str = ""
    is_async: bool = False
    idempotent: bool = False
    metrics: Recorder | NullRecorder = NULL_RECORDER


def option(
    default: Any,
    doc: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    secret: bool = False,
    check: Callable[[Any], str | None] | None = None,
) -> Any:
    """Declare one middleware option: its default, a one-line doc and simple bounds.

    ``secret=True`` marks a credential (a token, a password): messages, logs and
    ``showchain`` never show its value, and it is left out of the options' repr. ``check``
    validates a well-typed value further (an address): it returns why the value cannot
    work, or ``None``; ``build_options`` calls it, so every source of a value gets it.
    """
    metadata = {"doc": doc, "ge": ge, "gt": gt, "secret": secret, "check": check}
    if isinstance(default, list | dict | set):
        raise TypeError("mutable option defaults are shared between chains; use a tuple")
    return dataclasses.field(default=default, metadata=metadata, repr=not secret)


@dataclasses.dataclass(frozen=True)
class MiddlewareOptions:
    """Base of every middleware's options: a frozen dataclass, one field per option.

    Types come from the annotations and are enforced by the loader. ``validate`` adds the
    rules that types and bounds cannot say; it returns one message per problem.
    """

    def validate(self) -> list[str]:
        return []

    def method_names(self) -> list[tuple[str, str]]:
        """(option, name) for every method (``package.Service/Method``) or service name the
        options hold. check compares them with the served methods: a misspelled one would
        make the option silently do nothing for the method meant."""
        return []


class Middleware:
    """Base class for middleware. Subclasses override ``__call__`` (the sync path) and/or
    ``acall`` (the asyncio path) and, if they take options, define a nested ``Options``
    dataclass.

    ``sides`` says where the middleware makes sense. ``sync_capable`` and
    ``async_capable`` follow Django: they say which kind of chain the class can sit in. In
    an asyncio chain the handler is async: ``handler(call)`` returns an awaitable for a
    unary response and an async iterator for a response stream, and ``acall`` must return
    the same. A sync-only middleware in an asyncio chain runs in a worker thread (see
    ``resilience.core.adapters``), which works but costs a thread hop per call.
    ``repeats_calls`` and ``variants`` are read by the composition root (below).
    """

    Options: ClassVar[type[MiddlewareOptions]] = MiddlewareOptions
    sides: ClassVar[frozenset[Side]] = frozenset({"client", "server"})
    sync_capable: ClassVar[bool] = True
    async_capable: ClassVar[bool] = False
    #: Whether the class sends a call more than once (Retry, Hedging): check refuses two
    #: such layers in one chain (E011), since each would repeat the other's attempts.
    repeats_calls: ClassVar[bool] = False
    #: Subclasses to build instead of this class for an option's value, by dotted path:
    #: ``{"storage": {"redis": "pkg.module.RedisThing"}}``. The composition root picks the
    #: class of each chain (``resilience.core.loading.variant_for``), so a class never
    #: imports the layer above it that subclasses it (CircuitBreaker's Redis breaker).
    variants: ClassVar[dict[str, dict[str, str]]] = {}

    def __init__(self, handler: Handler, options: MiddlewareOptions, info: ChainInfo) -> None:
        self.handler = handler
        self.options = options
        self.info = info

    def __call__(self, call: Call) -> Any:
        return self.handler(call)

    def acall(self, call: Call) -> Any:
        """The asyncio path; the default passes the call through unchanged."""
        return self.handler(call)
