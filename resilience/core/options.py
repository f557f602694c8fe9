"""Turn plain settings values into a middleware's typed, validated options.

Every problem is returned as a sentence naming the option, the value given and what was
expected; nothing here raises for bad input. This is the one validation path of values, for
settings and middleware options alike: types, bounds, finite numbers and an option's own
``check`` (addresses). A secret option's value is never quoted (``is_secret``, ``redact``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
import urllib.parse
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

import grpc

from resilience.core.spelling import did_you_mean

T = TypeVar("T")

_STATUS_NAMES = {code.name: code for code in grpc.StatusCode}


def describe(tp: Any) -> str:
    """A reader's name for a type: 'a number', 'a list of status code names', ..."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if origin in (types.UnionType, typing.Union):
        parts = [describe(a) for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(parts) + " (or leave unset)"
    if origin is dict:
        value = typing.get_args(tp)[1]
        if value is Any:
            return "a table"
        if typing.get_origin(value) is dict:
            return "a table of tables"
        return "a table whose values are " + describe(value)
    if tp is Any:
        return "any value"
    if origin in (tuple, frozenset):
        (item, *_) = typing.get_args(tp)
        if item is grpc.StatusCode:
            return "a list of status code names such as ['UNAVAILABLE']"
        return "a list of " + _PLURALS.get(item, describe(item))
    return {
        bool: "true or false",
        int: "a whole number",
        float: "a number",
        str: "a string",
        grpc.StatusCode: "a status code name such as 'UNAVAILABLE'",
    }.get(tp, getattr(tp, "__name__", str(tp)))


_PLURALS = {str: "strings", int: "whole numbers", float: "numbers"}
#: A TOML key that needs no quotes.
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


#: What ``redact`` shows instead of a secret value.
MASK = "********"


def is_secret(field: dataclasses.Field[Any]) -> bool:
    """Whether the option is a credential, declared with ``option(..., secret=True)``: its
    value is never shown, in a message, a log line or ``showchain``."""
    return bool(field.metadata.get("secret"))


def redact(cls: type[Any], name: str, value: Any) -> Any:
    """``value`` of option ``name`` of ``cls`` as it may be shown: a secret option's value
    masked (a table keeps its keys, the identities; an empty value stays empty, so that
    "not set" still shows), any other value unchanged."""
    field = {f.name: f for f in dataclasses.fields(cls)}.get(name)
    if field is None or not is_secret(field):
        return value
    return mask(value)


def mask(value: Any) -> Any:
    """A secret's ``value`` as it may be shown (``redact`` once the option is known to be
    secret): for callers that hold a value of one declared secret, such as REDIS_URL's."""
    if not value:
        return value
    if isinstance(value, Mapping):
        return {k: MASK for k in value}
    if isinstance(value, str) and "://" in value:
        return _redact_url(value)
    return MASK


def _redact_url(url: str) -> str:
    """A URL (REDIS_URL) with its password masked ('***'): where it points may be shown."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return MASK
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(
        parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def kind_of(value: Any) -> str:
    """What a value is, for a message that must not quote it: 'a string', 'a table'..."""
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string" if value else "an empty string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple | frozenset | set):
        return "a list"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number" if math.isfinite(value) else "a number that is not finite"
    return type(value).__name__


def _holds_any(tp: Any) -> bool:
    """Whether values of type ``tp`` may hold anything, such as a middleware's options in
    SERVER_OPTIONS: the settings layer cannot tell their secrets, so it quotes none."""
    return tp is Any or any(_holds_any(arg) for arg in typing.get_args(tp))


class _Invalid(Exception):
    """A value that does not fit its type: where (keys within a table), what was given,
    and what was expected there (None: the type's description)."""

    def __init__(self, path: tuple[str, ...] = (), value: Any = None, tp: Any = None,
                 expected: str | None = None) -> None:
        super().__init__(path)
        self.path, self.value, self.tp, self.expected = path, value, tp, expected


def _coerce(value: Any, tp: Any, path: tuple[str, ...] = ()) -> Any:
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _Invalid(path, value, tp)
        item = typing.get_args(tp)[1]
        return {str(k): _coerce(v, item, (*path, str(k))) for k, v in value.items()}
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise _Invalid(path, value, tp)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in typing.get_args(tp):
            return None
        specific = None
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except _Invalid as exc:
                specific = specific or (exc if exc.expected or exc.path != path else None)
                continue
        raise specific or _Invalid(path, value, tp)
    if origin in (tuple, frozenset):
        if not isinstance(value, list | tuple):
            raise _Invalid(path, value, tp)
        (item, *_) = typing.get_args(tp)
        try:
            return origin(_coerce(v, item) for v in value)
        except _Invalid as exc:  # a list is shown whole: its items have no names
            expected = f"{describe(tp)}, each {exc.expected}" if exc.expected else None
            raise _Invalid(path, value, tp, expected) from None
    if tp is grpc.StatusCode:
        if isinstance(value, grpc.StatusCode):
            return value
        if isinstance(value, str) and value.upper() in _STATUS_NAMES:
            return _STATUS_NAMES[value.upper()]
        raise _Invalid(path, value, tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Invalid(path, value, tp)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Invalid(path, value, tp)
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                # TOML and dynaconf read nan and inf as floats; no option can use them (a
                # Timeout of nan fails every call, a backoff of nan raises).
                raise _Invalid(path, value, tp, "a finite number (not nan or inf)")
            return float(value)
        raise _Invalid(path, value, tp)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Invalid(path, value, tp)
    raise TypeError(f"option type {tp!r} is not supported")


def _shown(field: dataclasses.Field[Any], tp: Any, value: Any) -> str:
    """``value`` as a message may show it: quoted, unless the option is secret or may hold
    secrets (then only what kind of value it is)."""
    if is_secret(field):
        return f"{kind_of(value)} (not shown: a secret)"
    if _holds_any(tp):
        return kind_of(value)
    return repr(value)


def _value_problem(noun: str, field: dataclasses.Field[Any], tp: Any, exc: _Invalid) -> str:
    """The sentence for a value that does not fit its type, naming the entry within a
    table (``'Timeout'``) rather than quoting the whole table."""
    keys = ".".join(key if _BARE_KEY.fullmatch(key) else f'"{key}"' for key in exc.path)
    where = f" entry '{keys}'" if keys else ""
    expected = exc.expected or describe(exc.tp)
    if exc.path:
        expected += f" ({field.name} is {describe(tp).removesuffix(' (or leave unset)')})"
    return f"{noun} '{field.name}'{where} is {_shown(field, tp, exc.value)}; expected {expected}"


def _bounds_problem(noun: str, name: str, value: Any, meta: Mapping[str, Any]) -> str | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    if meta.get("ge") is not None and value < meta["ge"]:
        return f"{noun} '{name}' is {value!r}; expected a value >= {meta['ge']}"
    if meta.get("gt") is not None and value <= meta["gt"]:
        return f"{noun} '{name}' is {value!r}; expected a value > {meta['gt']}"
    return None


def _check_problem(noun: str, field: dataclasses.Field[Any], tp: Any, value: Any) -> str | None:
    """The option's own ``check`` (an address parser), after its type and bounds."""
    check = field.metadata.get("check")
    problem = check(value) if check is not None else None
    return f"{noun} '{field.name}' is {_shown(field, tp, value)}; {problem}" if problem else None


def build_options(
    cls: type[T], values: Mapping[str, Any], noun: str = "option"
) -> tuple[T | None, list[str]]:
    """Build the dataclass ``cls`` from ``values``; return it (or ``None``) and the problems.

    Names match case-insensitively, since environment variables arrive upper-case.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    by_lower = {name.lower(): name for name in fields}
    problems: list[str] = []
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        name = by_lower.get(str(key).lower())
        if name is None:
            valid = ", ".join(sorted(fields)) or "none"
            problems.append(
                f"unknown {noun} '{key}'{did_you_mean(str(key), fields)}; valid {noun}s: {valid}"
            )
            continue
        try:
            coerced = _coerce(value, hints[name])
        except _Invalid as exc:
            problems.append(_value_problem(noun, fields[name], hints[name], exc))
            continue
        problem = _bounds_problem(noun, name, coerced, fields[name].metadata) or (
            _check_problem(noun, fields[name], hints[name], coerced))
        if problem:
            problems.append(problem)
            continue
        kwargs[name] = coerced
    if problems:
        return None, problems
    options = cls(**kwargs)
    validate = getattr(options, "validate", None)
    if validate is not None:
        problems.extend(validate())
    return (None, problems) if problems else (options, [])


def option_docs(cls: type[Any]) -> list[tuple[str, str, Any, str]]:
    """(name, type description, default, doc) for every option, for docs and ``showchain``."""
    hints = typing.get_type_hints(cls)
    return [
        (f.name, describe(hints[f.name]), f.default, f.metadata.get("doc", ""))
        for f in dataclasses.fields(cls)
    ]
