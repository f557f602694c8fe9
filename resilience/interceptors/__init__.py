"""Plain grpc interceptors built from a settings file, for an existing grpcio application.

No manage.py, no apps: ``server_interceptor()`` runs SERVER_MIDDLEWARE around every method
a ``grpc.server`` serves, and ``client_interceptors()`` runs each method's client chain
(CLIENT_MIDDLEWARE, CLIENT_METHOD_MIDDLEWARE and their options) around every call on a
``grpc.intercept_channel``; the ``aio_`` variants do the same for grpc.aio. The settings are
checked as ``manage.py check`` checks them, and an error raises ImproperlyConfigured with
check's messages.

Each method's client chain is built on its first call and kept by the interceptor, so one
set of interceptors is one "channel": one breaker per method, one retry budget.
"""

# load, ClientInterceptor and BYPASSED_SERVICES are public too, but were never in __all__.
from resilience.interceptors.aio_client import aio_client_interceptors
from resilience.interceptors.server import BYPASSED_SERVICES as BYPASSED_SERVICES
from resilience.interceptors.server import aio_server_interceptor, server_interceptor
from resilience.interceptors.settings import load as load
from resilience.interceptors.sync_client import ClientInterceptor as ClientInterceptor
from resilience.interceptors.sync_client import client_interceptors
from resilience.transport.client import CHANNEL_OPTIONS

__all__ = [
    "CHANNEL_OPTIONS",
    "aio_client_interceptors",
    "aio_server_interceptor",
    "client_interceptors",
    "server_interceptor",
]
