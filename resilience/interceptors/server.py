"""The server interceptors: SERVER_MIDDLEWARE around every method a plain grpc server
serves, through the same interceptors runserver uses."""

from __future__ import annotations

import grpc
import grpc.aio

from resilience.conf.factory import ChainFactory
from resilience.interceptors.settings import SettingsArg, load
from resilience.transport.aio_server import AioChainInterceptor
from resilience.transport.server import ChainInterceptor

#: Services the server interceptors leave outside the stack, as runserver does: a
#: saturated server must still answer health checks.
BYPASSED_SERVICES = ("grpc.health.", "grpc.reflection.")


class _EveryMethod:
    """The methods the server interceptors wrap: all, except health and reflection."""

    def __contains__(self, method: object) -> bool:
        return not str(method).startswith(BYPASSED_SERVICES)


def server_interceptor(settings: SettingsArg = None) -> grpc.ServerInterceptor:
    """A ``grpc.ServerInterceptor`` running SERVER_MIDDLEWARE around every method of a
    ``grpc.server(..., interceptors=[...])``, one stack per method, built on its first call.
    """
    checked = load(settings, is_async=False)
    return ChainInterceptor(ChainFactory(checked, "server"), _EveryMethod())


def aio_server_interceptor(settings: SettingsArg = None) -> grpc.aio.ServerInterceptor:
    """``server_interceptor`` for ``grpc.aio.server``; servicer methods must be coroutine
    functions (``async def``), or async generators for response streams."""
    checked = load(settings, is_async=True)
    return AioChainInterceptor(ChainFactory(checked, "server", is_async=True), _EveryMethod())
