"""Small checks shared by the config loader and the part registries."""

from __future__ import annotations

import difflib
import math
import sys
import types
import typing
from typing import Any

from ppl_vae.errors import ConfigError


def suggest(name: str, choices: list[str]) -> str:
    """A ' Did you mean ...?' hint for a mistyped name, or '' if nothing is close."""
    close = difflib.get_close_matches(name, choices, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", str(annotation)).replace("typing.", "")


def check_type(value: Any, annotation: Any, key: str) -> Any:
    """Return ``value`` converted to ``annotation`` (int or "1e-3" -> float), or raise a
    ConfigError naming ``key``. Handles the simple types a YAML config holds."""
    origin = typing.get_origin(annotation)
    if annotation is Any or annotation is typing.Any:
        return value
    if origin is typing.Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(
                f"{key}: {value!r} is not allowed.{suggest(str(value), [str(a) for a in allowed])} "
                f"Choose one of: {', '.join(map(str, allowed))}."
            )
        return value
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
        if value is None and type(None) in members:
            return None
        for member in members:
            if member is type(None):
                continue
            try:
                return check_type(value, member, key)
            except ConfigError:
                pass
        names = " or ".join("null" if m is type(None) else _type_name(m) for m in members)
        raise ConfigError(f"{key}: expected {names}, got {value!r}.")
    if origin in (list, tuple) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}.")
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        return [check_type(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
    if annotation is float:
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}.")
        number = float(value) if abs(value) <= sys.float_info.max else math.inf  # huge ints overflow
        if not math.isfinite(number):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}.")
        return number
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}.")
        return value
    if annotation in (str, bool) and not isinstance(value, annotation):
        raise ConfigError(f"{key}: expected {_type_name(annotation)}, got {value!r}.")
    return value
