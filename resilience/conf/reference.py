"""The reference tables of the documentation, rendered from the declarations they describe:
the settings (``GlobalSettings``) and each middleware's options (its ``Options``), so that
the docs cannot drift from the code (``manage.py gendocs --check`` compares)."""

from __future__ import annotations

import dataclasses
import enum
import re
import typing
from typing import Any

_BOUNDS = (("ge", "≥"), ("gt", ">"))
_GENERATED = re.compile(
    r"(<!-- generated: (?P<what>[\w ]+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S
)


def _words(annotation: Any) -> str:
    """A type as a user writes it in TOML."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "whole number"
    if annotation is float:
        return "number"
    if annotation is str:
        return "string"
    if origin is typing.Literal:
        names = [f"`{arg}`" for arg in args]
        return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    if origin in (tuple, frozenset, list, set):
        item = args[0] if args else Any
        if isinstance(item, type) and issubclass(item, enum.Enum):
            return "list of status names"
        return f"list of {_words(item)}s" if item in (str, int, float) else "list"
    if origin is dict:
        return "table"
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        kinds = [_words(arg) for arg in args if arg is not type(None)]
        return " or ".join(kinds) + (", or none" if type(None) in args else "")
    return str(annotation)


def _toml(value: Any) -> str:
    """A default as TOML spells it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return f'"{value.name}"'
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, frozenset | set):
        return "[" + ", ".join(sorted(_toml(item) for item in value)) + "]"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if value is None:
        return "{}"
    if isinstance(value, dict):
        return "{}" if not value else str(value)
    return repr(value)


def _kind(field: dataclasses.Field[Any], hints: dict[str, Any]) -> str:
    words = _words(hints[field.name])
    bounds = [f"{sign} {field.metadata[key]:g}" for key, sign in _BOUNDS
              if field.metadata.get(key) is not None]
    return words + (" " + ", ".join(bounds) if bounds else "")


def _table(cls: type, first: str) -> str:
    hints = typing.get_type_hints(cls)
    rows = [f"| {first} | type | default | meaning |", "|---|---|---|---|"]
    for field in dataclasses.fields(cls):
        default = field.default
        rows.append(
            f"| `{field.name}` | {_kind(field, hints)} | `{_toml(default)}` | "
            f"{field.metadata.get('doc', '')} |"
        )
    return "\n".join(rows) + "\n"


def settings_table() -> str:
    """Every framework setting: name, type, default and meaning."""
    from resilience.conf.global_settings import GlobalSettings

    return _table(GlobalSettings, "setting")


def options_table(middleware: type) -> str:
    """One middleware's options: name, type, default and meaning."""
    return _table(middleware.Options, "option")  # type: ignore[attr-defined]


def render(what: str) -> str:
    """The text of one generated block: ``settings`` or ``options <Middleware>``."""
    import resilience.middleware

    kind, _, name = what.partition(" ")
    if kind == "settings":
        return settings_table()
    if kind == "options":
        return options_table(getattr(resilience.middleware, name))
    raise ValueError(f"unknown generated block {what!r}")


def regenerate(text: str) -> str:
    """``text`` with every ``<!-- generated: ... -->`` block rendered afresh."""
    return _GENERATED.sub(lambda m: m[1] + render(m["what"].strip()) + m[4], text)
