"""An adaptive concurrency limit: like ConcurrencyLimit, but the limit is learned from
the latency and the drops of finished calls (fixed, AIMD, Vegas or Gradient2 from
``resilience.limits``), after Netflix concurrency-limits' gRPC interceptors.

Unlike Netflix's interceptors this also limits streaming calls: a response stream holds
its slot until it ends, and its whole life is one sample. Admission never waits, so the
asyncio path takes the limiter's short-held thread lock like the sync one.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

import grpc

from resilience.core.call import Call
from resilience.core.errors import RpcStatusError, status_of
from resilience.core.middleware import ChainInfo, Handler, Middleware, MiddlewareOptions, option
from resilience.core.options import build_options
from resilience.limits.adaptive import ALGORITHMS
from resilience.limits.limiter import Limiter, Token

#: Statuses that say the call met overload (its own, or the server's): samples as drops.
DROP_CODES = frozenset({
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
})


def settle(token: Token, exc: BaseException) -> None:
    """Feed a call that ended with ``exc`` to the limiter: an overload status or a
    cancellation is a drop, any other status an ordinary sample, and an exception that is
    no status (a bug in a handler) no sample at all."""
    if isinstance(exc, grpc.RpcError):
        if status_of(exc) in DROP_CODES:
            token.dropped()
        else:
            token.success()
    elif isinstance(exc, asyncio.CancelledError):
        token.dropped()
    else:
        token.ignore()


class SampledStream:
    """A response stream holding one token: success at its end, the status's verdict if
    it fails, a drop if it is closed early or dropped unread."""

    __slots__ = ("_responses", "_token")

    def __init__(self, responses: Any, token: Token) -> None:
        self._token = token  # first, so __del__ still settles if iter() fails
        self._responses = iter(responses)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._responses)
        except StopIteration:
            self._token.success()
            raise
        except BaseException as exc:
            settle(self._token, exc)
            raise

    def close(self) -> None:
        self._token.dropped()
        close = getattr(self._responses, "close", None)
        if close is not None:
            close()

    def __del__(self) -> None:
        self._token.dropped()


class AsyncSampledStream:
    """``SampledStream`` for asyncio: a reader cancelled while it waits is a drop too."""

    __slots__ = ("_responses", "_token")

    def __init__(self, responses: Any, token: Token) -> None:
        self._token = token
        self._responses = aiter(responses)  # a grpc.aio stream call is iterable, not an iterator

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        try:
            return await anext(self._responses)
        except StopAsyncIteration:
            self._token.success()
            raise
        except BaseException as exc:
            settle(self._token, exc)
            raise

    async def aclose(self) -> None:
        self._token.dropped()
        aclose = getattr(self._responses, "aclose", None)
        if aclose is not None:
            await aclose()

    def __del__(self) -> None:
        self._token.dropped()


class AdaptiveLimit(Middleware):
    """Reject calls beyond an adaptive concurrency limit with ``reject_code``.

    Meant for servers, where it sheds load before queues build; on a client it bounds what
    one channel sends and backs off when the server answers RESOURCE_EXHAUSTED or
    UNAVAILABLE. ``partitions`` guarantee methods a share of the limit (see
    ``resilience.limits.limiter`` for the exact rule).
    """

    async_capable = True

    @dataclasses.dataclass(frozen=True)
    class Options(MiddlewareOptions):
        algorithm: Literal["fixed", "aimd", "vegas", "gradient2"] = option(
            "gradient2",
            "The limit algorithm: 'fixed', 'aimd', 'vegas' or 'gradient2'.",
        )
        params: dict[str, Any] | None = option(
            None,
            "The algorithm's own options (initial_limit, min_limit, max_limit, ...); "
            "unset: its defaults.",
        )
        partitions: dict[str, float] | None = option(
            None,
            "Full method name -> guaranteed share of the limit (shares sum to at most 1); "
            "unset: one limit shared by every call.",
        )
        scope: Literal["server", "method"] = option(
            "server",
            "'server': one limiter for every method of the server or channel; "
            "'method': one limiter per method.",
        )
        reject_code: Literal["RESOURCE_EXHAUSTED", "UNAVAILABLE"] = option(
            "RESOURCE_EXHAUSTED", "The status of a rejected call."
        )

        def method_names(self) -> list[tuple[str, str]]:
            return [("partitions", method) for method in self.partitions or {}]

        def algorithm_options(self) -> tuple[Any, list[str]]:
            """The chosen algorithm's options built from ``params``, and the problems."""
            return build_options(ALGORITHMS[self.algorithm].Options, self.params or {})

        def validate(self) -> list[str]:
            problems = [f"params: {p}" for p in self.algorithm_options()[1]]
            partitions = self.partitions or {}
            for method, share in partitions.items():
                service, slash, name = method.partition("/")
                if not (service and slash and name) or "/" in name:
                    problems.append(
                        f"option 'partitions' names {method!r}; expected a full method name "
                        "'package.Service/Method' such as 'cache.CacheService/Get'"
                    )
                if not 0 < share <= 1:
                    problems.append(
                        f"option 'partitions' gives {method!r} a share of {share!r}; expected "
                        "a number above 0 and at most 1, such as 0.7"
                    )
            total = sum(partitions.values())
            if total > 1 + 1e-9:
                problems.append(
                    f"option 'partitions' shares sum to {total:g}; expected at most 1: "
                    "lower some shares"
                )
            if partitions and self.scope == "method":
                problems.append(
                    "option 'partitions' is set with scope = 'method'; partitions share one "
                    "limit between methods, so set scope = 'server' or remove partitions"
                )
            return problems

    options: Options

    def __init__(self, handler: Handler, options: MiddlewareOptions, info: ChainInfo) -> None:
        super().__init__(handler, options, info)
        opts = self.options
        partitions = opts.partitions or {}
        if opts.scope == "server":
            key = f"adaptive_limit:{info.name}"
            where = "server" if info.side == "server" else "channel"
            scope = f"all methods of this {where}"
            if info.target:
                scope += f" ({info.target})"
            limiter = info.shared.get(key)
            if limiter is None:
                # setdefault is atomic: chains built concurrently still share one limiter.
                limiter = info.shared.setdefault(key, self._limiter(scope))
        else:
            scope = f"method {info.method}"
            limiter = self._limiter(scope)
        self.limiter: Limiter = limiter
        info.metrics.watch_limiter(info.name, lambda: limiter.limit, lambda: limiter.inflight)
        self._scope = scope
        self._partition = info.method if info.method in partitions else None
        self._code = grpc.StatusCode[opts.reject_code]
        self._retryable = self._code is grpc.StatusCode.UNAVAILABLE
        self._streaming = info.kind.response_streaming
        # Only a server's context says when the RPC ends; a client's carries call options.
        self._server = info.side == "server"
        self.acall = self._astream if self._streaming else self._aunary

    def _limiter(self, scope: str) -> Limiter:
        algorithm_options, _ = self.options.algorithm_options()
        algorithm = ALGORITHMS[self.options.algorithm](algorithm_options)
        return Limiter(algorithm, partitions=self.options.partitions, name=scope)

    @property
    def limit(self) -> int:
        return self.limiter.limit

    @property
    def in_flight(self) -> int:
        return self.limiter.inflight

    def __call__(self, call: Call) -> Any:
        token = self.limiter.try_acquire(self._partition)
        if token is None:
            raise self._rejection()
        if self._streaming:
            return self._stream(call, token)
        try:
            # A server handler that outlived its deadline (or its client) and returned
            # anyway reaches here as that status (resilience.transport.server), a drop.
            response = self.handler(call)
        except BaseException as exc:
            settle(token, exc)
            raise
        token.success()
        return response

    def _stream(self, call: Call, token: Token) -> SampledStream:
        if self._server and call.context is not None:
            # Runs when the RPC ends; a stream not read to its end by then was abandoned.
            call.context.add_callback(token.dropped)
        try:
            responses = self.handler(call)
        except BaseException as exc:
            settle(token, exc)
            raise
        return SampledStream(responses, token)

    async def _aunary(self, call: Call) -> Any:
        token = self.limiter.try_acquire(self._partition)
        if token is None:
            raise self._rejection()
        try:
            response = await self.handler(call)
        except BaseException as exc:  # cancellation of the awaiting task included
            settle(token, exc)
            raise
        token.success()
        return response

    def _astream(self, call: Call) -> AsyncSampledStream:
        """Admit now, like the sync path, and hand back the stream with its token."""
        token = self.limiter.try_acquire(self._partition)
        if token is None:
            raise self._rejection()
        if self._server and call.context is not None:
            # grpc.aio calls done callbacks with the context when the RPC ends, read or not.
            call.context.add_done_callback(lambda _context: token.dropped())
        try:
            responses = self.handler(call)
        except BaseException as exc:
            settle(token, exc)
            raise
        return AsyncSampledStream(responses, token)

    def _rejection(self) -> RpcStatusError:
        self.info.metrics.rejected("adaptive_limit")
        limiter = self.limiter
        return RpcStatusError(
            self._code,
            f"adaptive concurrency limit of {limiter.limit} reached for {self._scope} "
            f"({limiter.inflight} in flight); retry later",
            retryable=self._retryable,
        )
