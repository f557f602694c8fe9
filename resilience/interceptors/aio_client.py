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
from resilience.interceptors.aio_outcomes import AioDone, AioStream, aio_error
from resilience.interceptors.chains import CONTINUATION, Chains, captured, make_call
from resilience.interceptors.settings import SettingsArg, load
from resilience.transport.client import CallOptions, normalise_method, remaining_timeout


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


def _refuse_write_style(request_iterator: Any, method: str | bytes) -> None:
    """grpc.aio's ``call.write()`` style feeds requests from an iterator that waits for the
    interceptors to finish, while a chain runs until its call ends: that would deadlock."""
    code = getattr(request_iterator, "ag_code", None)
    if code is not None and code.co_name == "_proxy_writes_as_request_iterator":
        raise NotImplementedError(
            f"{normalise_method(method)}: call.write()/done_writing() cannot run through "
            f"resilience's asyncio interceptors; pass the requests as an iterator instead: "
            f"stub.Method(request_iterator)"
        )


class _AioInterceptor:
    """What the four grpc.aio interceptors share: the chains and the per-call setup."""

    def __init__(self, chains: Chains) -> None:
        self._chains = chains
        self.middleware = chains.middleware

    async def _unary(self, continuation: Any, details: Any, request: Any,
                     kind: CallKind) -> Any:
        name, chain = self._chains.get(details.method, kind, request)
        call = make_call(name, kind, request, details)
        token = CONTINUATION.set(continuation)
        try:
            response = await chain(call)
        except RpcStatusError as exc:
            raise aio_error(exc) from None
        finally:
            CONTINUATION.reset(token)
        if kind.request_streaming:  # grpc.aio wants a call here, not a response
            return AioDone(response, call.context.grpc_call)
        return response

    def _stream(self, continuation: Any, details: Any, request: Any,
                kind: CallKind) -> AioStream:
        name, chain = self._chains.get(details.method, kind, request)
        call = make_call(name, kind, request, details)
        token = CONTINUATION.set(continuation)
        try:
            responses = chain(call)
        except RpcStatusError as exc:
            raise aio_error(exc) from None
        finally:
            CONTINUATION.reset(token)
        return AioStream(responses, call, continuation)


class AioUnaryUnaryInterceptor(_AioInterceptor, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                                    request: Any) -> Any:
        return await self._unary(continuation, client_call_details, request,
                                 CallKind.UNARY_UNARY)


class AioUnaryStreamInterceptor(_AioInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any,
                                     request: Any) -> Any:
        return self._stream(continuation, client_call_details, request, CallKind.UNARY_STREAM)


class AioStreamUnaryInterceptor(_AioInterceptor, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any,
                                     request_iterator: Any) -> Any:
        _refuse_write_style(request_iterator, client_call_details.method)
        return await self._unary(continuation, client_call_details, request_iterator,
                                 CallKind.STREAM_UNARY)


class AioStreamStreamInterceptor(_AioInterceptor, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any,
                                      request_iterator: Any) -> Any:
        _refuse_write_style(request_iterator, client_call_details.method)
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
