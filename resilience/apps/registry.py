"""Import the apps named in INSTALLED_APPS and index their services and methods."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator, Sequence

from resilience.apps.config import AppConfig, Service
from resilience.core.call import CallKind
from resilience.core.errors import ImproperlyConfigured
from resilience.core.loading import describe_exception


def _import_config(entry: str) -> AppConfig:
    """The app's AppConfig; anything its import raises (a SyntaxError in its servicer, an
    ImportError of its own) becomes ImproperlyConfigured naming the app and the error."""
    try:
        module = importlib.import_module(f"{entry}.apps")
    except ModuleNotFoundError as exc:
        if exc.name and (entry.startswith(exc.name) or exc.name == f"{entry}.apps"):
            raise ImproperlyConfigured(
                f"app '{entry}' cannot be imported: no module '{entry}.apps' "
                f"(an app is a package with an apps.py that defines an AppConfig subclass)"
            ) from None
        raise ImproperlyConfigured(
            f"app '{entry}' cannot be imported: {describe_exception(exc)}"
        ) from None
    except Exception as exc:
        raise ImproperlyConfigured(
            f"app '{entry}' cannot be imported: {describe_exception(exc)}"
        ) from None
    configs = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, AppConfig)
        and obj is not AppConfig
        and obj.__module__ == module.__name__
    ]
    if len(configs) != 1:
        raise ImproperlyConfigured(
            f"app '{entry}': {entry}.apps must define exactly one AppConfig subclass, "
            f"found {len(configs)}"
        )
    return configs[0]()


class Apps:
    """The installed apps, in settings order, with a method index for chain building."""

    def __init__(self, configs: Sequence[AppConfig]) -> None:
        self.configs = tuple(configs)

    def services(self) -> Iterator[Service]:
        for config in self.configs:
            yield from config.services

    def methods(self) -> dict[str, CallKind]:
        """Every served method's full name and kind."""
        return {name: kind for service in self.services() for name, kind in service.methods()}

    def service_names(self) -> list[str]:
        return [service.full_name for service in self.services()]


def load_apps(entries: Sequence[str]) -> Apps:
    """Import each app; raise ImproperlyConfigured naming the first one that fails."""
    return Apps([_import_config(entry) for entry in entries])
