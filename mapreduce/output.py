"""Reduce output files: one row per key, TSV or JSON lines, and reading them back.

TSV: `key<TAB>value`; a `str` key is written as is (with `\\`, tab and newline backslash-escaped),
any other key and every value as compact JSON. JSON lines: `{"key": ..., "value": ...}`, which
keeps key types on the way back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from mapreduce.job import Pair

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_UNESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def format_row(key: Any, value: Any, output_format: str) -> str:
    """One output line (with its newline)."""
    if output_format == "json":
        return _json({"key": key, "value": value}) + "\n"
    key_text = key.translate(_ESCAPES) if isinstance(key, str) else _json(key)
    return f"{key_text}\t{_json(value)}\n"


def write_rows(f: TextIO, rows: Iterable[Pair], output_format: str) -> int:
    """Write rows; returns how many."""
    rows = list(rows)
    if output_format == "tsv" and all(type(k) is str and type(v) is int for k, v in rows):
        text = "".join([f"{k}\t{v}\n" for k, v in rows])  # str keys with int counts: one join
        n = len(rows)  # valid unless some key holds a character that needs escaping
        if (
            text.count("\t") == n
            and text.count("\n") == n
            and "\\" not in text
            and "\r" not in text
        ):
            f.write(text)
            return n
    for i in range(0, len(rows), 65536):
        f.write("".join([format_row(k, v, output_format) for k, v in rows[i : i + 65536]]))
    return len(rows)


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    out: list[str] = []
    chars = iter(text)
    for char in chars:
        out.append(_UNESCAPES[next(chars)] if char == "\\" else char)
    return "".join(out)


def read_rows(path: str | os.PathLike[str]) -> Iterator[Pair]:
    """Rows of one output file; the format follows the file's suffix (.tsv or .jsonl).
    TSV keys come back as `str`."""
    is_json = os.fspath(path).endswith(".jsonl")
    with open(path, encoding="utf-8") as f:
        for line in f:
            if is_json:
                row = json.loads(line)
                yield row["key"], row["value"]
            else:
                key, value = line.rstrip("\n").split("\t", 1)
                yield _unescape(key), json.loads(value)


def suffix(output_format: str) -> str:
    return ".jsonl" if output_format == "json" else ".tsv"
