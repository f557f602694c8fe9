"""Import an object from a dotted path, with messages that say what was wrong."""

from __future__ import annotations

import importlib
from typing import Any

from resilience.core.errors import ImproperlyConfigured


def import_string(path: str) -> Any:
    """Import ``package.module.Attribute``; raise ImproperlyConfigured with the reason."""
    if not isinstance(path, str) or "." not in path:
        raise ImproperlyConfigured(f"{path!r} doesn't look like a dotted path (module.Attribute)")
    module_path, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_path)
    except ModuleNotFoundError as exc:
        if exc.name and module_path.startswith(exc.name):
            raise ImproperlyConfigured(
                f"'{path}' does not import: no module named '{exc.name}'"
            ) from None
        raise ImproperlyConfigured(f"'{path}' does not import: {exc}") from None
    except ImportError as exc:
        raise ImproperlyConfigured(f"'{path}' does not import: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ImproperlyConfigured(
            f"'{path}' does not import: module '{module_path}' defines no '{attr}'"
        ) from None
