"""argparse `type`s that refuse bad values at parse time, naming what is allowed
(`prog: error: argument --lr: must be a finite number > 0, got 'inf'`, exit 2). No jax, no torch:
every CLI validates its flags before importing or compiling anything heavy."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any


def _typed(
    name: str, convert: Callable[[str], Any], ok: Callable[[Any], bool], allowed: str
) -> Any:
    """An argparse `type` that converts a flag's string and checks it, naming what is allowed."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"{allowed}, got {text!r}")
        return value

    parse.__name__ = name
    return parse


positive_int = _typed("positive_int", int, lambda v: v >= 1, "must be an integer >= 1")
nonneg_int = _typed("nonneg_int", int, lambda v: v >= 0, "must be an integer >= 0")
positive_float = _typed(
    "positive_float", float, lambda v: math.isfinite(v) and v > 0, "must be a finite number > 0"
)
nonneg_float = _typed(
    "nonneg_float", float, lambda v: math.isfinite(v) and v >= 0, "must be a finite number >= 0"
)


def int_list(*, allow_empty: bool = False) -> Any:
    """argparse `type` for comma-separated positive widths (`"128,64,32"`, canonicalised);
    an empty entry, a non-integer or (unless `allow_empty`) an empty list is refused."""

    def parse(text: str) -> str:
        parts = [p.strip() for p in text.split(",")] if text.strip() else []
        if not all(p.isdigit() and int(p) > 0 for p in parts):
            raise argparse.ArgumentTypeError(
                f"must be comma-separated integers >= 1 with no empty entries, got {text!r}"
            )
        if not parts and not allow_empty:
            raise argparse.ArgumentTypeError("must list at least one width, got ''")
        return ",".join(str(int(p)) for p in parts)

    parse.__name__ = "int_list"
    return parse


def dims(text: str) -> tuple[int, ...]:
    """`"128,64,32"` (an `int_list` value) -> `(128, 64, 32)`."""
    return tuple(int(p) for p in text.split(",") if p)
