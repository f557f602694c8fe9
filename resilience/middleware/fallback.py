"""Answer a failed client call with a response of your own, for the failures you choose.

A degraded answer (the last value seen, a default, an empty page) is often better for a
caller than an error, but only when the failure says the server could not answer
(UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, or a circuit breaker failing fast).
Caller errors such as NOT_FOUND or INVALID_ARGUMENT always pass through: answering them
with made-up data would hide a bug or a missing key.

``function(request, error)`` makes the response; it may re-raise ``error`` when it has
nothing honest to return. An optional ``observe(request, response)`` sees every response
that did arrive, so a fallback can serve what was last seen (``apps.cache.fallbacks``).

Response streams: the fallback applies only if the call fails before its first response,
and then ``function`` returns an iterable of responses (or, under asyncio, an async
iterable). After the first real response the error reaches the caller, since splicing
made-up items onto real ones would corrupt the stream.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, ClassVar, cast

import grpc
import structlog

from resilience.core.call import Call, Side
from resilience.core.errors import BreakerOpenError, ImproperlyConfigured, status_of
from resilience.core.loading import import_string
from resilience.core.middleware import ChainInfo, Handler, Middleware, MiddlewareOptions, option
from resilience.core.streams import end_early

log = structlog.get_logger(__name__)


def is_breaker_rejection(error: BaseException) -> bool:
    """Whether ``error`` is a CircuitBreaker failing fast (not a server's UNAVAILABLE)."""
    return isinstance(error, BreakerOpenError)


def _callable_problems(name: str, path: str, shape: str) -> list[str]:
    """Why the dotted ``path`` given as option ``name`` is not a usable function, if it isn't."""
    try:
        target = import_string(path)
    except ImproperlyConfigured as exc:
        return [f"option '{name}' is {path!r}: {exc}; expected the dotted path of a "
                f"function {shape}"]
    if not callable(target):
        return [f"option '{name}' is {path!r}, which is a {type(target).__name__}, not a "
                f"function; expected the dotted path of a function {shape}"]
    return []


class Fallback(Middleware):
    """Return ``function(request, error)`` instead of raising, for the configured failures.

    List it outermost (first), so that it sees the error Retry and CircuitBreaker finally
    give up with. Each served call is logged at WARNING (``fallback_served``, with method
    and code, never payloads).
    """

    sides: ClassVar[frozenset[Side]] = frozenset({"client"})
    async_capable = True

    @dataclasses.dataclass(frozen=True)
    class Options(MiddlewareOptions):
        function: str = option(
            "",
            "Required. Dotted path to fn(request, error) -> response (an iterable of "
            "responses for response streams); it may re-raise error. Under asyncio it may "
            "be async.",
        )
        codes: frozenset[grpc.StatusCode] = option(
            frozenset(
                {
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                }
            ),
            "Statuses answered by the fallback; every other status passes through.",
        )
        on_breaker_open: bool = option(
            True,
            "Answer a CircuitBreaker's fail-fast rejection; decided by this option alone, "
            "whatever codes says about UNAVAILABLE.",
        )
        observe: str = option(
            "",
            "Dotted path to fn(request, response), called with every response that "
            "arrives (each item of a stream); empty for none.",
        )

        def validate(self) -> list[str]:
            if not self.function:
                problems = [
                    "option 'function' is not set; expected the dotted path of a function "
                    "fn(request, error) -> response, such as "
                    "'apps.cache.fallbacks.last_value'"
                ]
            else:
                problems = _callable_problems(
                    "function", self.function, "fn(request, error) -> response"
                )
            if self.observe:
                problems += _callable_problems("observe", self.observe, "fn(request, response)")
            return problems

    def __init__(self, handler: Handler, options: MiddlewareOptions, info: ChainInfo) -> None:
        super().__init__(handler, options, info)
        opts = cast(Fallback.Options, options)
        self._function: Callable[[Any, BaseException], Any] = import_string(opts.function)
        self._observe: Callable[[Any, Any], Any] | None = (
            import_string(opts.observe) if opts.observe else None
        )
        self._codes = opts.codes
        self._on_breaker_open = opts.on_breaker_open
        self._method = info.method
        self._streaming = info.kind.response_streaming
        self.acall = self._astream if self._streaming else self._aunary

    def __call__(self, call: Call) -> Any:
        if self._streaming:
            return self._stream(call)
        try:
            response = self.handler(call)
        except grpc.RpcError as exc:
            if not self._serves(exc):
                raise
            response = self._function(call.request, exc)
            self._served(exc)
            return response
        if self._observe is not None:
            self._notice(call.request, response)
        return response

    def _stream(self, call: Call) -> Iterator[Any]:
        """Start the call now (grpc starts a stream when the stub is called); observe each
        response; fall back only if the call fails before the first one."""
        try:
            responses = self.handler(call)
        except grpc.RpcError as exc:
            if not self._serves(exc):
                raise
            fallback = self._function(call.request, exc)
            self._served(exc)
            return iter(fallback)
        return self._observed(call, responses)

    def _observed(self, call: Call, responses: Any) -> Iterator[Any]:
        request = call.request
        observe = self._observe
        sent = False
        try:
            for response in responses:
                sent = True
                if observe is not None:
                    self._notice(request, response)
                yield response
        except grpc.RpcError as exc:
            if sent or not self._serves(exc):
                raise
            fallback = self._function(request, exc)
            self._served(exc)
            yield from fallback
        except GeneratorExit:
            # The caller stopped reading: end the RPC now rather than when it is collected.
            close = getattr(responses, "cancel", None) or getattr(responses, "close", None)
            if close is not None:
                close()
            raise

    async def _aunary(self, call: Call) -> Any:
        try:
            response = await self.handler(call)
        except grpc.RpcError as exc:
            if not self._serves(exc):
                raise
            return await self._aserve(call.request, exc)
        if self._observe is not None:
            await self._anotice(call.request, response)
        return response

    def _astream(self, call: Call) -> AsyncIterator[Any]:
        """``_stream`` for asyncio: the call starts now."""
        try:
            rpc = self.handler(call)
        except grpc.RpcError as exc:
            if not self._serves(exc):
                raise
            return self._afallback(call.request, exc)
        return self._aobserved(call, rpc)

    async def _aobserved(self, call: Call, rpc: Any) -> AsyncIterator[Any]:
        request = call.request
        observe = self._observe
        responses = None
        sent = False
        try:
            responses = aiter(rpc)  # a grpc.aio stream call is iterable, not an iterator
            async for response in responses:
                sent = True
                if observe is not None:
                    await self._anotice(request, response)
                yield response
        except grpc.RpcError as exc:
            if sent or not self._serves(exc):
                raise
            async for response in self._afallback(request, exc):
                yield response
        except GeneratorExit:
            await end_early(rpc, responses)
            raise

    async def _afallback(self, request: Any, error: grpc.RpcError) -> AsyncIterator[Any]:
        """The fallback's responses, from a sync or an async iterable."""
        fallback = await self._aserve(request, error)
        if hasattr(fallback, "__aiter__"):
            async for response in fallback:
                yield response
        else:
            for response in fallback:
                yield response

    def _serves(self, error: grpc.RpcError) -> bool:
        """Is this failure one the fallback answers?"""
        if is_breaker_rejection(error):
            return self._on_breaker_open
        return status_of(error) in self._codes

    def _served(self, error: grpc.RpcError) -> None:
        self.info.metrics.fallback()
        log.warning("fallback_served", method=self._method, code=status_of(error).name)

    async def _aserve(self, request: Any, error: grpc.RpcError) -> Any:
        """The fallback's answer, awaited if ``function`` is async."""
        response = self._function(request, error)
        if inspect.isawaitable(response):
            response = await response
        self._served(error)
        return response

    def _notice(self, request: Any, response: Any) -> None:
        """Show ``observe`` a response; a failing observer never fails a call that worked."""
        try:
            self._observe(request, response)  # type: ignore[misc]
        except Exception:
            log.exception("fallback_observe_failed", method=self._method)

    async def _anotice(self, request: Any, response: Any) -> None:
        """``_notice`` for asyncio, awaiting an async ``observe``."""
        try:
            result = self._observe(request, response)  # type: ignore[misc]
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("fallback_observe_failed", method=self._method)
