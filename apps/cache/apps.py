"""The cache app's declaration: its one service, and checks of its settings."""

from __future__ import annotations

from typing import Any

from apps.cache.protos import cache_pb2, cache_pb2_grpc
from apps.cache.servicer import (
    DEFAULT_MAX_KEY_BYTES,
    DEFAULT_MAX_VALUE_BYTES,
    AsyncCacheServicer,
    CacheServicer,
)
from resilience.apps.config import AppConfig, Service
from resilience.checks import CheckMessage, error

_LIMITS = {
    "CACHE_MAX_VALUE_BYTES": DEFAULT_MAX_VALUE_BYTES,
    "CACHE_MAX_KEY_BYTES": DEFAULT_MAX_KEY_BYTES,
}


class CacheConfig(AppConfig):
    name = "apps.cache"
    settings = tuple(_LIMITS)
    services = (
        Service(
            descriptor=cache_pb2.DESCRIPTOR.services_by_name["CacheService"],
            add_to_server=cache_pb2_grpc.add_CacheServiceServicer_to_server,
            stub=cache_pb2_grpc.CacheServiceStub,
            servicer=CacheServicer,
            async_servicer=AsyncCacheServicer,
        ),
    )

    def check(self, settings: Any) -> list[CheckMessage]:
        """The size limits must be whole numbers above zero; a bool is not a number here."""
        return [
            error("cache.E001", setting, f"is {value!r}; expected a whole number > 0",
                  f"set {setting} to a size in bytes, or remove it for {default}")
            for setting, default in _LIMITS.items()
            if isinstance(value := settings.get(setting, default), bool)
            or not isinstance(value, int)
            or value <= 0
        ]
