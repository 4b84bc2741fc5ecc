"""`--set key=value`: text parsed by the type of the config field it names.

    parse_overrides(ReContrastConfig, {"coreset_ratio": "abc"})
    -> ValueError: config field coreset_ratio expects a float, got 'abc'

Only strings are parsed (what a command line gives); values that are already Python objects
(the API, the demo's settings) pass through unchanged, and the config's own checks judge them.
Supported annotations: bool, int, float, str, None, unions of them (`int | None`, `bool | str`),
tuple[X, ...], tuple[X, Y], list[X].  Sequences are written `1,2` or as JSON `[1, 2]`.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Mapping

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_NONE = {"none", "null"}


class OverrideError(ValueError):
    """A --set value that does not parse as its field's type (the message names the field)."""


def _name(tp: Any) -> str:
    if tp is type(None):
        return "none"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_name(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        args = typing.get_args(tp)
        inner = ", ".join("..." if a is Ellipsis else _name(a) for a in args)
        return f"{origin.__name__}[{inner}]"
    return getattr(tp, "__name__", str(tp))


def _parse(tp: Any, text: str) -> Any:
    """Parse `text` as `tp`; raises ValueError when it does not fit."""
    t = text.strip()
    origin = typing.get_origin(tp)
    if tp is type(None):
        if t.lower() in _NONE:
            return None
        raise ValueError(t)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        # None first, then bool (so "true" is not the string "true" of `bool | str`), str last
        order = sorted(args, key=lambda a: (a is not type(None), a is not bool, a is str))
        for a in order:
            try:
                return _parse(a, t)
            except ValueError:
                continue
        raise ValueError(t)
    if origin in (tuple, list):
        args = typing.get_args(tp)
        if t.startswith("["):
            try:
                items = [str(v) if not isinstance(v, str) else v for v in json.loads(t)]
            except (json.JSONDecodeError, TypeError) as e:
                raise ValueError(t) from e
        else:
            items = [p for p in t.split(",") if p.strip()]
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise ValueError(t)
            return tuple(_parse(a, v) for a, v in zip(args, items))
        elem = args[0] if args else str
        vals = [_parse(elem, v) for v in items]
        return tuple(vals) if origin is tuple else vals
    if tp is bool:
        if t.lower() in _TRUE:
            return True
        if t.lower() in _FALSE:
            return False
        raise ValueError(t)
    if tp is int:
        return int(t)  # "1.5" and "abc" raise
    if tp is float:
        v = float(t)
        return v
    if tp is str:
        return text
    if tp is Any:
        try:
            return json.loads(t)
        except json.JSONDecodeError:
            return text
    raise ValueError(f"unsupported field type {tp!r}")


def field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved annotation of a config dataclass."""
    try:
        hints = typing.get_type_hints(cls)
    except TypeError:  # `X | Y` annotations on Python < 3.10: values then parse as JSON or text
        hints = {}
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def parse_overrides(cls: type, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return `overrides` with every string value parsed by its field's type in `cls`.
    Unknown keys are left for the caller's own check (which lists the valid keys)."""
    types_ = field_types(cls)
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        tp = types_.get(key)
        if tp is None or not isinstance(value, str):
            out[key] = value
            continue
        try:
            out[key] = _parse(tp, value)
        except ValueError:
            raise OverrideError(f"config field {key} expects {_name(tp)}, got {value!r}") from None
    return out


__all__ = ["OverrideError", "field_types", "parse_overrides"]
