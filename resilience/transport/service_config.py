"""Keep configured retries to the Retry and Hedging middleware on the framework's channels.

grpcio's transparent retries stay on: grpc-core replays, at most once per call, an RPC
the server provably never saw (a stream above a GOAWAY's last stream id, or one never
written), which is safe even for non-idempotent methods. A gRPC service config's
``retryPolicy`` (or ``hedgingPolicy``) is different: grpc-core would retry inside every
attempt Retry makes, so the attempts a server sees would multiply. Such a policy can reach
a channel two ways: from the resolver, which ``CHANNEL_OPTIONS`` turns off
(``grpc.service_config_disable_resolution``), and from a ``grpc.service_config`` channel
option, which ``connect()`` and ``aio_connect()`` refuse here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from resilience.core.errors import ImproperlyConfigured

SERVICE_CONFIG = "grpc.service_config"
DISABLE_RESOLUTION = "grpc.service_config_disable_resolution"
# The policies of gRFC A6 that make grpc-core itself repeat an RPC.
POLICIES = ("retryPolicy", "hedgingPolicy")


def _names(method_config: dict[str, Any]) -> str:
    """The services and methods a methodConfig entry names, for the message."""
    names = [
        "/".join(str(n[k]) for k in ("service", "method") if n.get(k)) or "every method"
        for n in method_config.get("name") or () if isinstance(n, dict)
    ]
    return ", ".join(names) or "every method"


def check_service_config(value: str | bytes) -> None:
    """Raise ImproperlyConfigured if the service config ``value`` (JSON) gives any method a
    retryPolicy or hedgingPolicy, or is not JSON at all (then nothing can be checked)."""
    try:
        config = json.loads(value)
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(
            f"channel option {SERVICE_CONFIG} is not valid JSON ({exc}); fix it, or leave "
            f"the option out"
        ) from None
    entries = config.get("methodConfig") if isinstance(config, dict) else None
    for entry in entries if isinstance(entries, list) else ():
        if not isinstance(entry, dict):
            continue
        for policy in POLICIES:
            if policy in entry:
                raise ImproperlyConfigured(
                    f"channel option {SERVICE_CONFIG} gives {_names(entry)} a {policy}: "
                    f"grpcio would repeat the RPC inside every attempt the Retry and "
                    f"Hedging middleware make, multiplying the attempts the server sees. "
                    f"Remove the {policy} from the service config and configure retries "
                    f"with resilience.middleware.Retry (or Hedging) in CLIENT_MIDDLEWARE "
                    f"and CLIENT_OPTIONS instead"
                )


def check_channel_options(options: Sequence[tuple[str, Any]]) -> None:
    """Refuse the channel options that would let grpcio add retries of its own: a
    ``grpc.service_config`` with a retry or hedging policy, and turning service-config
    resolution back on (a resolver's service config may carry one)."""
    for key, value in options:
        if key == SERVICE_CONFIG:
            check_service_config(value)
        elif key == DISABLE_RESOLUTION and not value:
            raise ImproperlyConfigured(
                f"channel option {DISABLE_RESOLUTION}={value!r} would let the resolver "
                f"supply a service config, whose retryPolicy would multiply the attempts "
                f"of the Retry middleware; leave the option out (connect() sets it to 1) "
                f"and give load-balancing settings with grpc.lb_policy_name or a "
                f"{SERVICE_CONFIG} without a retryPolicy"
            )
