"""The one validation vocabulary every config speaks (no jax, no torch).

`Config` is the base of every frozen config dataclass: after construction it checks each field
against its annotation (`bool`, `int`, `float`, `str`, `tuple[int, ...]`, another config, `X | None`),
then runs the subclass's `validate()` for the value rules. Every failure is a `ValueError` of one
shape, naming the class, the field, the value and what is allowed:

    AttentionConfig.num_groups=3 is invalid: must divide num_heads=8
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Self

INT32_MAX = 2**31 - 1


def fail(config: object, field: str, value: Any, allowed: str) -> typing.NoReturn:
    raise ValueError(f"{type(config).__name__}.{field}={value!r} is invalid: {allowed}")


_FIELD_TYPES: dict[type, dict[str, Any]] = {}


def _field_types(cls: type) -> dict[str, Any]:
    """`{field: annotation}` of a config dataclass, resolved once per class."""
    if cls not in _FIELD_TYPES:
        hints = typing.get_type_hints(cls)
        _FIELD_TYPES[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return _FIELD_TYPES[cls]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _coerce(config: object, field: str, value: Any, kind: Any) -> Any:
    """`value` checked against the annotation `kind`; returns it in canonical (hashable) form."""
    args = typing.get_args(kind)
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(config, field, value, inner)
    if kind is bool:
        if not isinstance(value, bool):
            fail(config, field, value, "must be True or False")
        return value
    if kind is int:
        if not _is_int(value) or abs(value) > INT32_MAX:
            fail(config, field, value, "must be an integer within int32 range")
        return value
    if kind is float:
        if not (_is_int(value) or isinstance(value, float)) or not math.isfinite(value):
            fail(config, field, value, "must be a finite number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            fail(config, field, value, "must be a string")
        return value
    if typing.get_origin(kind) is tuple:
        if not isinstance(value, tuple | list):
            fail(config, field, value, "must be a tuple of integers")
        if args[-1] is not Ellipsis and len(value) != len(args):
            fail(config, field, value, f"must hold exactly {len(args)} values")
        if not all(_is_int(v) and abs(v) <= INT32_MAX for v in value):
            fail(config, field, value, "every entry must be an integer")
        return tuple(value)
    if isinstance(kind, type) and issubclass(kind, Config):
        if not isinstance(value, kind):
            fail(config, field, value, f"must be a {kind.__name__}")
        return value
    raise TypeError(f"{type(config).__name__}.{field}: unsupported annotation {kind!r}")


class Config:
    """Mixin for `@dataclass(frozen=True)` configs: typed fields, then `validate()`, then `replace()`.

    A subclass may override `normalize()` to turn accepted shorthands into the declared type
    (e.g. `"64,32"` into `(64, 32)`) before the type check.
    """

    def __post_init__(self) -> None:
        self.normalize()
        for field, kind in _field_types(type(self)).items():
            object.__setattr__(self, field, _coerce(self, field, getattr(self, field), kind))
        self.validate()

    def normalize(self) -> None:
        """Rewrite accepted shorthands into the declared field types (default: none)."""

    def validate(self) -> None:
        """Value rules beyond the declared types (default: none)."""

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def check_positive(config: object, *fields: str) -> None:
    for field in fields:
        value = getattr(config, field)
        if value is not None and value < 1:
            fail(config, field, value, "must be a positive integer")


def check_at_least(config: object, minimum: float, *fields: str) -> None:
    for field in fields:
        value = getattr(config, field)
        if value is not None and value < minimum:
            fail(config, field, value, f"must be >= {minimum}")


def check_choice(config: object, field: str, allowed: tuple[str, ...]) -> None:
    value = getattr(config, field)
    if value not in allowed:
        fail(config, field, value, f"allowed values are {', '.join(allowed)}")


def check_range(config: object, field: str, low: float, high: float, closed: str = "[]") -> None:
    """`low <= value <= high` with `closed` one of `[]`, `[)`, `(]`, `()`."""
    value = getattr(config, field)
    above = value >= low if closed[0] == "[" else value > low
    below = value <= high if closed[1] == "]" else value < high
    if not (above and below):
        fail(config, field, value, f"must be in {closed[0]}{low}, {high}{closed[1]}")
