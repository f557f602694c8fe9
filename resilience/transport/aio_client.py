"""The asyncio client: a ``grpc.aio.Channel`` wrapper whose methods run through async chains.

Stubs and calling code are grpc.aio's: ``await stub.Get(request)`` and
``async for item in stub.Dump(request)``. Awaiting the grpc call inside the chain is what
makes a cancelled caller cancel the RPC.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from contextvars import copy_context
from time import monotonic
from typing import Any

import grpc
import grpc.aio

from resilience.conf.factory import ChainFactory
from resilience.core.call import (
    Call,
    CallKind,
    CallOptions,
    CancelScope,
    attempt_metadata,
    new_call,
)
from resilience.core.middleware import Handler
from resilience.transport.aio_calls import AioStreamCall, AioUnaryCall, as_coroutine
from resilience.transport.client import (
    ChainedChannel,
    ChainMultiCallable,
    call_kwargs,
    cancelled_before,
    open_channel,
    remaining_timeout,
)


def _terminal(inner: Any, kind: CallKind) -> Handler:
    """The innermost handler: the grpc.aio multicallable, with the chain's deadline.

    It returns grpc.aio's call object itself, the awaitable (or stream) of the layer
    above, and leaves it in the call's options for the object the stub returned.
    """
    if kind.response_streaming:

        def stream(call: Call) -> Any:
            opts: CallOptions = call.context
            if opts.scope is not None and opts.scope.cancelled:
                raise cancelled_before(call)
            rpc = inner(call.request, **call_kwargs(call))
            opts.started(rpc)
            return rpc

        return stream

    def unary(call: Call) -> Any:
        """A deadline already passed gives an awaitable that raises, as grpc's call
        would."""
        timeout = call.deadline
        if timeout is not None:
            timeout -= monotonic()
            if timeout <= 0:
                return _expired(call)
        opts: CallOptions = call.context
        rpc = inner(
            call.request, timeout=timeout,
            metadata=(call.metadata or None) if call.attempt == 1 else attempt_metadata(call),
            credentials=opts.credentials, wait_for_ready=opts.wait_for_ready,
            compression=opts.compression,
        )
        # opts.started(rpc), inlined for the usual call that has nothing else to tell.
        opts.grpc_call = rpc
        if opts.waiter is not None or opts.scope is not None:
            opts.started(rpc)
        return rpc

    return unary


new_object = object.__new__
_COROUTINE = types.CoroutineType


async def _expired(call: Call) -> Any:
    """Raises DEADLINE_EXCEEDED when awaited: the deadline passed before the attempt (and
    the monotonic clock never goes back, so ``remaining_timeout`` raises)."""
    return remaining_timeout(call)


class _AioUnaryMultiCallable(ChainMultiCallable):
    """grpc.aio's unary-response multicallable: returns a started call object. A chain
    whose layers all hand grpc.aio's call back untouched returns that call itself."""

    __slots__ = ()

    def __call__(
        self,
        request: Any = None,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str | bytes]] | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        # AioUnaryCall(...) field by field: it is also the call's options, and a frame
        # less here is a frame less on every call.
        rpc = new_object(AioUnaryCall)
        if credentials is not None or wait_for_ready is not None or compression is not None:
            rpc.credentials = credentials
            rpc.wait_for_ready = wait_for_ready
            rpc.compression = compression
        call = new_call(Call)
        call.method = self._method
        call.kind = self._kind
        call.side = "client"
        call.request = request
        call.metadata = tuple(metadata) if metadata else ()
        call.deadline = rpc._deadline = None if timeout is None else monotonic() + timeout
        call.attempt = 1
        call.context = rpc
        result = self._chain(call)
        if type(result) is not _COROUTINE:
            if isinstance(result, grpc.aio.Call):
                return result  # every layer handed grpc.aio's call back untouched
            result = as_coroutine(result)
        rpc._coroutine = result
        rpc._context = context = copy_context()
        try:  # the chain's first step, as AioUnaryCall.__init__ takes it
            rpc._waiting = context.run(result.send, None)
        except StopIteration as stop:
            rpc._finish(True, stop.value)
        except BaseException as exc:  # the call's outcome, for its awaiter
            rpc._finish(False, exc)
        return rpc


class _AioStreamMultiCallable(ChainMultiCallable):
    """grpc.aio's response-streaming multicallable: returns a started ``AioStreamCall``."""

    __slots__ = ()

    def __call__(
        self,
        request: Any = None,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str | bytes]] | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> AioStreamCall:
        options = CallOptions(credentials, wait_for_ready, compression, True,
                              scope=CancelScope())
        call = self._call(request, timeout, metadata, options)
        try:
            responses = self._chain(call)
        except grpc.RpcError as exc:  # refused before any attempt: raised on first read
            return AioStreamCall(None, options, call.deadline, exc)
        return AioStreamCall(responses, options, call.deadline)


class AioResilientChannel(ChainedChannel, grpc.aio.Channel):
    """Wraps a ``grpc.aio.Channel`` so that every method runs through its async chain."""

    is_async = True
    multicallables = (_AioUnaryMultiCallable, _AioStreamMultiCallable)

    def _terminal(self, inner: Any, kind: CallKind) -> Handler:
        return _terminal(inner, kind)

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    async def __aenter__(self) -> AioResilientChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel.channel_ready()


def aio_connect(
    target: str,
    settings: Any,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> AioResilientChannel:
    """Open a grpc.aio channel to ``target`` whose methods run through async client chains.

    Without ``credentials`` the channel uses TLS as the CLIENT_TLS_* settings say.
    """
    channel = open_channel(grpc.aio, target, settings, credentials, options)
    return AioResilientChannel(
        channel, ChainFactory(settings, "client", is_async=True, target=target)
    )
