"""The asyncio client: a ``grpc.aio.Channel`` wrapper whose methods run through async chains.

Stubs and calling code are grpc.aio's: ``await stub.Get(request)`` and
``async for item in stub.Dump(request)``. Awaiting the grpc call inside the chain is what
makes a cancelled caller cancel the RPC.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from time import monotonic
from typing import Any

import grpc
import grpc.aio

from resilience.conf.chains import ChainResolver
from resilience.core.call import Call, CallKind
from resilience.core.middleware import Handler
from resilience.transport.client import (
    ChainedChannel,
    attempt_metadata,
    call_kwargs,
    open_channel,
    remaining_timeout,
)


def _terminal(inner: Any, kind: CallKind) -> Handler:
    """The innermost handler: the grpc.aio multicallable, with the chain's deadline."""
    if kind.response_streaming:

        async def stream(call: Call) -> AsyncIterator[Any]:
            responses = inner(call.request, **call_kwargs(call))
            try:
                async for response in responses:
                    yield response
            finally:
                # A consumer that stops early must not leave the RPC running.
                responses.cancel()

        return stream

    def unary(call: Call) -> Any:
        """grpc.aio's call object itself, the awaitable of the layer above: a coroutine of
        our own around it would cost a frame per call. A deadline already passed gives an
        awaitable that raises, as grpc's call would."""
        if call.context is None:  # no call options: skip building a kwargs dict
            timeout = call.deadline
            if timeout is not None:
                timeout -= monotonic()
                if timeout <= 0:
                    return _expired(call)
            return inner(
                call.request, timeout=timeout,
                metadata=(call.metadata or None) if call.attempt == 1 else attempt_metadata(call),
            )
        if call.deadline is not None and call.deadline <= monotonic():
            return _expired(call)
        return inner(call.request, **call_kwargs(call))

    return unary


async def _expired(call: Call) -> Any:
    """Raises DEADLINE_EXCEEDED when awaited: the deadline passed before the attempt (and
    the monotonic clock never goes back, so ``remaining_timeout`` raises)."""
    return remaining_timeout(call)


class AioResilientChannel(ChainedChannel, grpc.aio.Channel):
    """Wraps a ``grpc.aio.Channel`` so that every method runs through its async chain."""

    is_async = True

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
    return AioResilientChannel(channel, ChainResolver(settings, is_async=True), target)
