"""Stable key hashing for partitioning.

Python's built-in `hash(str)` is salted per process (PYTHONHASHSEED), so two workers would send the
same key to different partitions. `stable_hash` is CRC-32 of a canonical byte encoding instead: the
same key gives the same number in every process, on every machine, in every run.
"""

from __future__ import annotations

import json
import zlib
from typing import Any


def key_bytes(key: Any) -> bytes:
    """Canonical bytes of a key: UTF-8 for `str`, raw `bytes`, compact JSON for anything else."""
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, bytes):
        return key
    return json.dumps(key, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode(
        "utf-8"
    )


def stable_hash(key: Any) -> int:
    """Unsigned 32-bit CRC of `key_bytes(key)`; identical across processes and runs."""
    if isinstance(key, str):
        return zlib.crc32(key.encode("utf-8"))
    return zlib.crc32(key_bytes(key))
