"""Import an object from a dotted path, with messages that say what was wrong."""

from __future__ import annotations

import importlib
import os
import traceback
from typing import Any

from resilience.core.errors import ImproperlyConfigured
from resilience.core.middleware import Middleware
from resilience.core.spelling import did_you_mean


def describe_exception(exc: BaseException) -> str:
    """The one line a check message shows for an import that failed: the error's type and
    message and, unless the message already says it (a SyntaxError does), where it was
    raised. Never a traceback."""
    if isinstance(exc, SyntaxError):
        return f"{type(exc).__name__}: {exc.msg} ({exc.filename}, line {exc.lineno})"
    text = f"{type(exc).__name__}: {exc}"
    frames = traceback.extract_tb(exc.__traceback__)
    # The innermost frame of the user's code, not importlib's own machinery.
    machinery = os.path.dirname(importlib.__file__ or "") + os.sep
    user = [f for f in frames
            if not f.filename.startswith(("<frozen", machinery)) and f.filename != __file__]
    if user:
        text += f" (at {user[-1].filename}, line {user[-1].lineno})"
    return text


def import_string(path: str) -> Any:
    """Import ``package.module.Attribute``; raise ImproperlyConfigured with the reason.

    Any exception the module raises while it is imported (a SyntaxError, an ImportError of
    its own, a NameError) becomes that ImproperlyConfigured, so check can report it.
    """
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
        raise ImproperlyConfigured(
            f"'{path}' does not import: {describe_exception(exc)}"
        ) from None
    except Exception as exc:
        raise ImproperlyConfigured(
            f"'{path}' does not import: {describe_exception(exc)}"
        ) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        public = [name for name in vars(module) if not name.startswith("_")]
        raise ImproperlyConfigured(
            f"'{path}' does not import: module '{module_path}' defines no "
            f"'{attr}'{did_you_mean(attr, public)}"
        ) from None


def variant_for(factory: type[Middleware], options: Any) -> type[Middleware]:
    """The class to build for ``options``: the subclass ``factory.variants`` names for an
    option's value (CircuitBreaker with ``storage = "redis"``), else ``factory``. Only the
    class's own declaration counts, so a user's subclass is built as it is."""
    variants: dict[str, dict[str, str]] = vars(factory).get("variants", {})
    for name, paths in variants.items():
        value = getattr(options, name, None)
        path = paths.get(value) if isinstance(value, str) else None
        if path is None:
            continue
        variant = import_string(path)
        if not (isinstance(variant, type) and issubclass(variant, factory)):
            raise ImproperlyConfigured(
                f"'{path}', the class {factory.__name__} names for {name} = {value!r}, is "
                f"not a subclass of {factory.__name__}"
            )
        return variant
    return factory
