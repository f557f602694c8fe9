"""Helpers for testing your own middleware without a server: a scripted handler, a
``ChainInfo`` with defaults, an injectable clock, and ``build`` to make a middleware from
settings-style options exactly as the loader does.

    from resilience.testing import FakeClock, FakeHandler, build, call_for

    def test_require_tenant_rejects_calls_without_the_header():
        handler = FakeHandler(result="ok")
        layer = build(RequireTenant, handler, side="server")
        with pytest.raises(RpcStatusError):
            layer(call_for(metadata=()))
        assert handler.calls == []
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from resilience.core.call import Call, CallKind, Side
from resilience.core.errors import ImproperlyConfigured
from resilience.core.loading import variant_for
from resilience.core.middleware import ChainInfo, Handler, Middleware
from resilience.core.options import build_options

__all__ = ["FakeClock", "FakeHandler", "build", "call_for", "chain_info"]

METHOD = "test.Service/Method"


class FakeClock:
    """A monotonic clock that moves only when told: ``clock()`` reads it, ``advance(s)``
    and ``sleep(s)`` move it (``sleep`` also records the wait in ``sleeps``)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


class FakeHandler:
    """The next handler of a middleware under test: it records every call it gets and
    answers with ``outcomes`` in turn (an exception instance is raised, anything else is
    returned), then with ``result`` for ever. ``stream=True`` returns ``result`` as an
    iterator of responses. For asyncio chains use ``handler.acall``."""

    def __init__(self, *outcomes: Any, result: Any = None, stream: bool = False) -> None:
        self.outcomes = list(outcomes)
        self.result = result
        self.stream = stream
        self.calls: list[Call] = []

    def _next(self, call: Call) -> Any:
        self.calls.append(call)
        outcome = self.outcomes.pop(0) if self.outcomes else self.result
        if isinstance(outcome, BaseException):
            raise outcome
        return iter(outcome) if self.stream else outcome

    def __call__(self, call: Call) -> Any:
        return self._next(call)

    def acall(self, call: Call) -> Any:
        """The asyncio shape: an awaitable response, or an async iterator of responses."""
        if self.stream:
            try:
                responses = self._next(call)
            except BaseException as error:
                return _araise(error)
            return _aiterate(responses)
        return _aanswer(self, call)


async def _aanswer(handler: FakeHandler, call: Call) -> Any:
    return handler._next(call)


async def _aiterate(responses: Iterable[Any]) -> Any:
    for response in responses:
        yield response


async def _araise(error: BaseException) -> Any:
    raise error
    yield  # an async generator that raises on its first read


def chain_info(
    method: str = METHOD,
    kind: CallKind = CallKind.UNARY_UNARY,
    side: Side = "client",
    *,
    name: str = "",
    is_async: bool = False,
    idempotent: bool = True,
    target: str = "test",
    shared: dict[str, Any] | None = None,
) -> ChainInfo:
    """A ``ChainInfo`` for one method, with defaults a unit test rarely changes."""
    return ChainInfo(method, kind, side, name, {} if shared is None else shared, target,
                     is_async, idempotent)


def call_for(
    request: Any = None,
    method: str = METHOD,
    kind: CallKind = CallKind.UNARY_UNARY,
    side: Side = "client",
    *,
    metadata: Sequence[tuple[str, str | bytes]] = (),
    deadline: float | None = None,
    context: Any = None,
) -> Call:
    """A ``Call`` as the transport would make it."""
    return Call(method, kind, side, request, metadata=tuple(metadata), deadline=deadline,
                context=context)


def build(
    middleware: type[Middleware],
    handler: Handler,
    *,
    options: dict[str, Any] | None = None,
    **info: Any,
) -> Middleware:
    """``middleware`` over ``handler`` with ``options`` as settings would give them (names
    and values validated and converted by the loader's own code), in a chain described by
    ``info`` (``chain_info``'s arguments). Raises ``ImproperlyConfigured`` with the
    loader's messages for bad options; ``MiddlewareNotUsed`` if it leaves the chain. The
    class is the one the options choose, as the chain factory builds it (``variant_for``)."""
    info.setdefault("name", middleware.__name__)
    built, problems = build_options(middleware.Options, options or {})
    if problems:
        raise ImproperlyConfigured("; ".join(problems))
    return variant_for(middleware, built)(handler, built, chain_info(**info))
