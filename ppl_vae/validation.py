"""Small checks shared by the config loader and the part registries."""

from __future__ import annotations

import contextlib
import difflib
import math
import sys
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Iterator

from ppl_vae.errors import ConfigError

MAX_SIZE = 2**20
"""The largest size (latent dimension, layer width, number of mixture components or pseudo-inputs)
a config may ask for: 1048576 is far beyond any VAE here, two layers of it already cannot be
allocated (that fails fast, as a ConfigError), and a single one of it still fits in memory; larger
sizes are refused up front rather than risking an allocation that succeeds and exhausts memory."""
MAX_FLOWS = 100
"""The most flow layers: each is a network of its own, built one after another."""
MIN_SCALE, MAX_SCALE = 1e-6, 1e6
"""The range of a fixed scale (σ) or a floor added to a learned one: a scale below 1e-6 makes
((x - μ) / σ)² overflow float32 for data in [0, 1] (and 1e-50 becomes 0 in float32, so log σ = -inf);
one above 1e6 is flat over the data."""


class OutOfRange(ConfigError):
    """A value of the right type outside its allowed range; ``requirement`` says what is allowed."""

    def __init__(self, key: str, value: Any, requirement: str) -> None:
        super().__init__(f"{key}: must be {requirement}, got {value!r}.")
        self.key, self.value, self.requirement = key, value, requirement


@dataclass(frozen=True)
class Bounds:
    """The allowed range of a number, as metadata of its annotation: ``Annotated[int, Bounds(1)]``.

    ``low`` and ``high`` are inclusive unless ``low_open``; ``note`` says why, in the error message."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    note: str = ""

    def requirement(self) -> str:
        """The range in words: '>= 1', '> 0', 'in [0, 1]'..."""
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"<= {self.high:g}"
        return f"in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}]"

    def check(self, value: float, key: str) -> None:
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        if too_low or (self.high is not None and value > self.high):
            raise OutOfRange(key, value, self.requirement() + (f" ({self.note})" if self.note else ""))


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Length:
    """How many items a list must hold, as metadata of its annotation: ``Annotated[list[int],
    Length(2, 2)]`` (exactly two), ``Length(1)`` (at least one); ``what`` names them in messages."""

    low: int
    high: int | None = None
    what: str = "items"

    def check(self, value: list, key: str) -> None:
        if len(value) < self.low or (self.high is not None and len(value) > self.high):
            count = {None: f"at least {self.low}", self.low: self.low}.get(self.high, f"{self.low} to {self.high}")
            raise OutOfRange(key, list(value), f"a list of {count} {self.what}")


Size = Annotated[int, Bounds(1, MAX_SIZE)]
"""A size or a count of things held in memory: at least 1, at most :data:`MAX_SIZE`."""
Count = Annotated[int, Bounds(1)]
"""A count of repetitions (epochs, steps): at least 1."""
HiddenSizes = Annotated[list[Size], Length(1, what="layer widths (this network needs a hidden layer)")]
"""The hidden layer widths of a network that needs at least one hidden layer."""
Flows = Annotated[int, Bounds(1, MAX_FLOWS)]
"""A number of flow layers: at least 1, at most :data:`MAX_FLOWS`."""
Scale = Annotated[float, Bounds(MIN_SCALE, MAX_SCALE, note="in data units: smaller scales underflow float32, "
                                                         "larger ones are flat over the data")]
"""A fixed scale σ, or a floor added to a learned one: in [:data:`MIN_SCALE`, :data:`MAX_SCALE`]."""
NonNegative = Annotated[float, Bounds(0)]
Positive = Annotated[float, Bounds(0, low_open=True)]

ALLOCATION_FAILURES = ("can't allocate memory", "out of memory", "Storage size calculation overflowed",
                       "integer multiplication overflow")


@contextlib.contextmanager
def allocation_checked(key: str) -> Iterator[None]:
    """Turn a failure to allocate memory inside the block (torch's CPU or CUDA allocator, Python's
    MemoryError) into a ConfigError naming ``key``: the sizes in the config are too large."""
    try:
        yield
    except (MemoryError, RuntimeError) as error:
        if not isinstance(error, MemoryError) and not any(text in str(error) for text in ALLOCATION_FAILURES):
            raise
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(
            f"{key}: too large to allocate ({detail}); reduce the sizes it is built with (its options, "
            "model.latent_dim) until it fits in memory."
        ) from None


def suggest(name: str, choices: list[str]) -> str:
    """A ' Did you mean ...?' hint for a mistyped name, or '' if nothing is close."""
    close = difflib.get_close_matches(name, choices, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", str(annotation)).replace("typing.", "")


def check_type(value: Any, annotation: Any, key: str) -> Any:
    """Return ``value`` converted to ``annotation`` (int or "1e-3" -> float), or raise a
    ConfigError naming ``key``. Handles the simple types a YAML config holds, and the :class:`Bounds`
    and :class:`Length` of ``Annotated`` ones."""
    origin = typing.get_origin(annotation)
    if annotation is Any or annotation is typing.Any:
        return value
    if origin is Annotated:
        base, *constraints = typing.get_args(annotation)
        value = check_type(value, base, key)
        for constraint in constraints:
            constraint.check(value, key)
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
        return _check_union(value, typing.get_args(annotation), key)
    if origin in (list, tuple) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}.")
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        return [check_type(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
    if annotation is float:
        return _check_float(value, key)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}.")
        return value
    if annotation in (str, bool) and not isinstance(value, annotation):
        raise ConfigError(f"{key}: expected {_type_name(annotation)}, got {value!r}.")
    return value


def _check_union(value: Any, members: tuple[Any, ...], key: str) -> Any:
    """``value`` as the first of a Union's ``members`` it fits; an out-of-range error names the range."""
    if value is None and type(None) in members:
        return None
    for member in members:
        if member is type(None):
            continue
        try:
            return check_type(value, member, key)
        except OutOfRange as error:  # the right type, out of range: say which range
            optional = " or null" if type(None) in members and error.key == key else ""
            raise OutOfRange(error.key, error.value, error.requirement + optional) from None
        except ConfigError:
            pass
    names = " or ".join("null" if m is type(None) else _type_name(m) for m in members)
    raise ConfigError(f"{key}: expected {names}, got {value!r}.")


def _check_float(value: Any, key: str) -> float:
    """A finite float from a number, or from a string such as "1e-3" (PyYAML reads it so, no dot)."""
    if isinstance(value, str):
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
