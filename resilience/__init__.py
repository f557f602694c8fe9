"""resilience: service-mesh resilience for gRPC services, declared as middleware in settings."""

from resilience.core.call import Call, CallKind
from resilience.core.errors import ImproperlyConfigured, MiddlewareNotUsed, RpcStatusError
from resilience.core.middleware import ChainInfo, Handler, Middleware, MiddlewareOptions, option

__all__ = [
    "Call",
    "CallKind",
    "ChainInfo",
    "Handler",
    "ImproperlyConfigured",
    "Middleware",
    "MiddlewareNotUsed",
    "MiddlewareOptions",
    "RpcStatusError",
    "option",
]

__version__ = "0.1.0"

# Plain grpc interceptors (resilience.interceptors), loaded on first use: they import the
# transports and the settings machinery, which ``import resilience`` in every middleware
# module must not pull in.
_INTERCEPTORS = (
    "CHANNEL_OPTIONS",
    "aio_client_interceptors",
    "aio_server_interceptor",
    "client_interceptors",
    "server_interceptor",
)
__all__ += _INTERCEPTORS


def __getattr__(name: str) -> object:
    if name in _INTERCEPTORS:
        from resilience import interceptors

        return getattr(interceptors, name)
    raise AttributeError(f"module 'resilience' has no attribute {name!r}")
