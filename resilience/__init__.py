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
