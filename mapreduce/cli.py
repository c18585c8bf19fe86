"""Argument types and the fresh output directory shared by the MapReduce command lines.

Each rejects a bad value while the arguments are parsed, so argparse prints one line,
`prog: error: argument --flag: ...`, and exits with status 2 before any work starts.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

from mapreduce.job import check_encoding


def _number(text: str, kind: type, low: float, inclusive: bool) -> float:
    try:
        value = kind(text)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
    if value != value or value < low or (value == low and not inclusive):  # NaN, too small
        bound = f">= {low:g}" if inclusive else f"> {low:g}"
        raise argparse.ArgumentTypeError(f"must be {bound}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return int(_number(text, int, 1, inclusive=True))


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return int(_number(text, int, 0, inclusive=True))


def at_least_two(text: str) -> int:
    """An integer >= 2 (partition counts when strategies are compared)."""
    return int(_number(text, int, 2, inclusive=True))


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _number(text, float, 0, inclusive=False)
    if value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1]."""
    value = _number(text, float, 0, inclusive=True)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text!r}")
    return value


def text_encoding(text: str) -> str:
    """A codec name the engine can split (see `mapreduce.job.check_encoding`)."""
    try:
        return check_encoding(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def new_file(text: str) -> str:
    """A path to write, in a directory that exists (so the write at the end cannot fail on it)."""
    folder = os.path.dirname(text) or "."
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"directory {folder!r} does not exist")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory")
    return text


def fresh_output_dir(
    job: str, root: str = os.path.join("runs", "mapreduce"), *, create: bool = True
) -> str:
    """A new `root/JOB-YYYYmmdd-HHMMSS[-N]` that no earlier run has used, created unless
    `create` is False (then only its would-be name)."""
    base = os.path.join(root, f"{job}-{time.strftime('%Y%m%d-%H%M%S')}")
    for n in itertools.count():
        path = base if n == 0 else f"{base}-{n}"
        if not create:
            return path
        try:
            os.makedirs(path)
        except FileExistsError:
            continue
        return path
    raise AssertionError("unreachable")
