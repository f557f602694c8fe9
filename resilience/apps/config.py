"""What an app declares: the services it serves and the stubs its clients use."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from google.protobuf.descriptor import ServiceDescriptor

from resilience.checks import CheckMessage
from resilience.core.call import CallKind


@dataclasses.dataclass(frozen=True)
class Service:
    """One gRPC service of an app.

    ``servicer`` is called with the settings when a server starts, and returns the servicer
    instance that ``add_to_server`` registers. ``async_servicer`` does the same for the
    asyncio server, whose servicer methods are ``async def`` (async generators for
    response streams); without one the app cannot be served with ``ASYNCIO``.
    """

    descriptor: ServiceDescriptor
    add_to_server: Callable[[Any, Any], None]
    stub: type
    servicer: Callable[[Any], Any]
    async_servicer: Callable[[Any], Any] | None = None

    @property
    def full_name(self) -> str:
        return self.descriptor.full_name

    def methods(self) -> Iterator[tuple[str, CallKind]]:
        """Each method's full name (``package.Service/Method``) and call kind."""
        for m in self.descriptor.methods:
            kind = CallKind((m.client_streaming, m.server_streaming))
            yield f"{self.full_name}/{m.name}", kind


class AppConfig:
    """Subclass this in ``<app>/apps.py``; the registry finds the one subclass there."""

    name: ClassVar[str] = ""
    services: ClassVar[tuple[Service, ...]] = ()
    #: The app's own setting names (``CACHE_MAX_VALUE_BYTES``): check reports a key one or
    #: two letters off one of them as a typo instead of letting the app read its default.
    settings: ClassVar[tuple[str, ...]] = ()

    def check(self, settings: Any) -> list[CheckMessage]:
        """The app's own checks, such as of its settings; ``resilience.checks.error`` makes
        a message. check runs it under the ``apps`` tag; ids are the app's own, prefixed
        with its label (``cache.E001``), so that ``SILENCED_CHECKS`` can name them."""
        return []
