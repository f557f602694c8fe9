"""The asyncio client interceptors, one per call kind, and the terminal through which
their chains reach grpc.aio."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio

from resilience.core.call import Call, CallKind
from resilience.core.errors import RpcStatusError
from resilience.core.middleware import Handler
from resilience.interceptors.aio_outcomes import AioDone, AioStream
from resilience.interceptors.chains import CONTINUATION, Chains, captured, make_call
from resilience.interceptors.settings import SettingsArg, load
from resilience.transport.aio_calls import AioUnaryCall, aio_error
from resilience.transport.client import CallOptions, remaining_timeout


def _aio_details(method: str | bytes, call: Call) -> grpc.aio.ClientCallDetails:
    opts: CallOptions = call.context
    return grpc.aio.ClientCallDetails(
        method, remaining_timeout(call), grpc.aio.Metadata(*call.metadata),
        opts.credentials, opts.wait_for_ready,
    )


def _aio_terminal(method: str | bytes, kind: CallKind) -> Handler:
    """One attempt through the continuation; cancelling the awaiting task cancels it."""
    if kind.response_streaming:

        async def stream(call: Call) -> AsyncIterator[Any]:
            rpc = await CONTINUATION.get()(_aio_details(method, call), call.request)
            captured(call, rpc)
            try:
                async for response in rpc:
                    yield response
            finally:
                rpc.cancel()

        return stream

    async def unary(call: Call) -> Any:
        rpc = await CONTINUATION.get()(_aio_details(method, call), call.request)
        response = await rpc
        captured(call, rpc)
        return response

    return unary


class _AioInterceptor:
    """What the four grpc.aio interceptors share: the chains and the per-call setup."""

    def __init__(self, chains: Chains) -> None:
        self._chains = chains
        self.middleware = chains.middleware

    async def _unary(self, continuation: Any, details: Any, request: Any) -> Any:
        """A unary call, awaited here: grpc.aio already runs interceptors in a task."""
        name, chain = self._chains.get(details.method, CallKind.UNARY_UNARY, request)
        call = make_call(name, CallKind.UNARY_UNARY, request, details)
        token = CONTINUATION.set(continuation)
        try:
            response = await chain(call)
        except RpcStatusError as exc:
            raise aio_error(exc) from None
        finally:
            CONTINUATION.reset(token)
        return AioDone(response, call.context.grpc_call)

    def _request_stream(self, continuation: Any, details: Any, request: Any) -> AioUnaryCall:
        """A request stream, returned at once with its chain running in a task: in the
        ``write()`` style, grpc.aio makes writes wait until the interceptor returns."""
        name, chain = self._chains.get(details.method, CallKind.STREAM_UNARY, request)
        call = make_call(name, CallKind.STREAM_UNARY, request, details)
        token = CONTINUATION.set(continuation)  # the task's context is a copy of this one
        try:
            return AioUnaryCall(chain(call), call.context, call.deadline)
        finally:
            CONTINUATION.reset(token)

    def _stream(self, continuation: Any, details: Any, request: Any,
                kind: CallKind) -> AioStream:
        name, chain = self._chains.get(details.method, kind, request)
        call = make_call(name, kind, request, details)
        token = CONTINUATION.set(continuation)
        try:
            responses = chain(call)
        except grpc.RpcError as exc:
            return AioStream(None, call, continuation, exc)
        else:
            return AioStream(responses, call, continuation)
        finally:
            CONTINUATION.reset(token)


class AioUnaryUnaryInterceptor(_AioInterceptor, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                                    request: Any) -> Any:
        return await self._unary(continuation, client_call_details, request)


class AioUnaryStreamInterceptor(_AioInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any,
                                     request: Any) -> Any:
        return self._stream(continuation, client_call_details, request, CallKind.UNARY_STREAM)


class AioStreamUnaryInterceptor(_AioInterceptor, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any,
                                     request_iterator: Any) -> Any:
        return self._request_stream(continuation, client_call_details, request_iterator)


class AioStreamStreamInterceptor(_AioInterceptor, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any,
                                      request_iterator: Any) -> Any:
        return self._stream(continuation, client_call_details, request_iterator,
                            CallKind.STREAM_STREAM)


def aio_client_interceptors(settings: SettingsArg = None, *, target: str = ""
                            ) -> list[_AioInterceptor]:
    """Interceptors for ``grpc.aio.insecure_channel(target, interceptors=...)``, one per
    call kind (grpc.aio files each interceptor under one kind), sharing one set of chains.
    Make one set per channel; open it with ``options=CHANNEL_OPTIONS`` and no
    ``retryPolicy`` in a ``grpc.service_config`` of your own.
    """
    chains = Chains(load(settings, is_async=True), True, target, _aio_terminal)
    return [
        AioUnaryUnaryInterceptor(chains),
        AioUnaryStreamInterceptor(chains),
        AioStreamUnaryInterceptor(chains),
        AioStreamStreamInterceptor(chains),
    ]
