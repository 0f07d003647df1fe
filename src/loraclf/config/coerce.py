"""Typed coercion and range checks of config values, and the dataclass builder that collects every problem.

Generic over the dataclasses of config.py (which calls `build`), so it knows no section or key of its own.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Literal, Optional, Union

from ..base.errors import did_you_mean


def type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        return f"list of {type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"mapping of {type_name(k)} to {type_name(v)}"
    return getattr(tp, "__name__", str(tp))


def coerce(value, tp):
    """Return value as type tp, or raise TypeError/ValueError. Ints are accepted for floats, never the reverse."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a)
            except (TypeError, ValueError) as e:
                errors.append(e)
        raise TypeError(f"expected {type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        raise ValueError(f"must be one of {', '.join(map(str, choices))}, got {value!r}{hint}")
    if origin in (list, dict):
        return _container(value, tp, origin)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        raise TypeError(f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError(f"must be a finite number, got {value!r}")
            return value
        if isinstance(value, str):  # yaml reads 1e-4 (no dot) as a string
            try:
                return coerce(float(value), float)
            except ValueError:
                pass
        raise TypeError(f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError(f"expected a string, got {value!r}")
    raise TypeError(f"unsupported type {tp}")


def _container(value, tp, origin):
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise TypeError(f"expected {type_name(tp)}, got {value!r}")
        return [coerce(v, inner) for v in value]
    key_tp, value_tp = typing.get_args(tp)
    if not isinstance(value, dict):
        raise TypeError(f"expected {type_name(tp)}, got {value!r}")
    # YAML reads a label key 0 as an int: a mapping keyed by label names takes it as its text
    return {coerce(str(k) if key_tp is str and isinstance(k, (int, float)) else k, key_tp): coerce(v, value_tp)
            for k, v in value.items()}


INT64_MAX = 2**63 - 1  # the largest integer torch (and most of NumPy) can hold


def _shown(value) -> str:
    text = str(value)
    return text if len(text) < 20 else f"a {len(text.lstrip('-'))}-digit number"


def check_range(value, meta) -> Optional[str]:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    for key, op, word in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                          ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")):
        bound = meta.get(key)
        if bound is not None and not op(value, bound):
            return f"must be {word} {bound}, got {_shown(value)}"
    if isinstance(value, int) and abs(value) > INT64_MAX:
        return f"must be at most {INT64_MAX:,} in size, got {_shown(value)}"
    return None


def hints_of(cls) -> dict:
    return typing.get_type_hints(cls)


def build(cls, data: dict, prefix: str, problems: list[str]):
    hints = hints_of(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            problems.append(f"unknown key '{path}'{did_you_mean(key, fields)}")
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                problems.append(f"'{path}' must be a section (a mapping), got {value!r}")
                continue
            kwargs[key] = build(tp, value, path + ".", problems)
            continue
        try:
            coerced = coerce(value, tp)
        except (TypeError, ValueError) as e:
            problems.append(f"'{path}' {e}")
            continue
        bad = check_range(coerced, fields[key].metadata)
        if bad:
            problems.append(f"'{path}' {bad}")
            continue
        kwargs[key] = coerced
    return cls(**kwargs)
