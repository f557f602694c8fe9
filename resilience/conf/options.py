"""Turn plain settings values into a middleware's typed, validated options.

Every problem is returned as a sentence naming the option, the value given and what was
expected; nothing here raises for bad input.
"""

from __future__ import annotations

import dataclasses
import types
import typing
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


class _Invalid(Exception):
    pass


def _coerce(value: Any, tp: Any) -> Any:
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _Invalid
        item = typing.get_args(tp)[1]
        return {str(k): _coerce(v, item) for k, v in value.items()}
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise _Invalid
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in typing.get_args(tp):
            return None
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except _Invalid:
                continue
        raise _Invalid
    if origin in (tuple, frozenset):
        if not isinstance(value, list | tuple):
            raise _Invalid
        (item, *_) = typing.get_args(tp)
        return origin(_coerce(v, item) for v in value)
    if tp is grpc.StatusCode:
        if isinstance(value, grpc.StatusCode):
            return value
        if isinstance(value, str) and value.upper() in _STATUS_NAMES:
            return _STATUS_NAMES[value.upper()]
        raise _Invalid
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Invalid
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Invalid
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _Invalid
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Invalid
    raise TypeError(f"option type {tp!r} is not supported")


def _bounds_problem(noun: str, name: str, value: Any, meta: Mapping[str, Any]) -> str | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    if meta.get("ge") is not None and value < meta["ge"]:
        return f"{noun} '{name}' is {value!r}; expected a value >= {meta['ge']}"
    if meta.get("gt") is not None and value <= meta["gt"]:
        return f"{noun} '{name}' is {value!r}; expected a value > {meta['gt']}"
    return None


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
        except _Invalid:
            problems.append(f"{noun} '{name}' is {value!r}; expected {describe(hints[name])}")
            continue
        problem = _bounds_problem(noun, name, coerced, fields[name].metadata)
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
