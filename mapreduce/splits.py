"""Input splits: line-aligned byte ranges of input files, read in blocks of whole lines.

A line belongs to the split in which its first byte lies (Hadoop's rule), so a split's reader
skips the partial line at its start and finishes the line that crosses its end. No reader ever
holds more than one block (plus one line) of a file in memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

MIN_AUTO_SPLIT = 1 << 20
MAX_AUTO_SPLIT = 128 << 20


@dataclass(frozen=True)
class Split:
    """Bytes `[start, end)` of `path`; owns every line whose first byte is in that range."""

    path: str
    start: int
    end: int

    def __str__(self) -> str:
        return f"{self.path}:{self.start}-{self.end}"


def expand_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Input paths as files: a directory contributes its regular files (sorted, no dot-files)."""
    paths: list[str] = []
    for item in inputs:
        path = os.fspath(item)
        if os.path.isdir(path):
            names = sorted(n for n in os.listdir(path) if not n.startswith("."))
            paths.extend(
                os.path.join(path, n) for n in names if os.path.isfile(os.path.join(path, n))
            )
        elif os.path.isfile(path):
            paths.append(path)
        else:
            raise ValueError(f"input {path!r} is not a file or directory")
    if not paths:
        raise ValueError(f"no input files found in {[os.fspath(i) for i in inputs]}")
    return paths


def auto_split_bytes(total_bytes: int) -> int:
    """Split size from the total input alone (so every executor sees the same splits): a quarter
    of the input, at least 1 MiB and at most 128 MiB (Hadoop's block size). Few, large map tasks
    keep the per-key costs (combine, partition, sort, shuffle) small next to the per-word ones."""
    return max(MIN_AUTO_SPLIT, min(MAX_AUTO_SPLIT, -(-total_bytes // 4)))


def make_splits(paths: Sequence[str], split_bytes: int) -> list[Split]:
    """Cut each file into `split_bytes` ranges (an empty file gives no split)."""
    splits: list[Split] = []
    for path in paths:
        size = os.path.getsize(path)
        splits.extend(
            Split(path, s, min(s + split_bytes, size)) for s in range(0, size, split_bytes)
        )
    return splits


def read_blocks(split: Split, block_bytes: int) -> Iterator[tuple[int, bytes]]:
    """`(file offset, block)` pairs covering exactly the lines `split` owns; each block is whole
    lines (the file's last line may lack its newline)."""
    with open(split.path, "rb") as f:
        pos = split.start
        if pos > 0:
            f.seek(pos - 1)
            pos += len(f.readline()) - 1
        while pos < split.end:
            block = f.read(min(block_bytes, split.end - pos))
            if not block:
                return
            if not block.endswith(b"\n"):
                block += f.readline()
            yield pos, block
            pos += len(block)


def lines_with_offsets(offset: int, block: bytes) -> Iterator[tuple[int, bytes]]:
    """The lines of `block` (newline removed) with their file offsets."""
    start = 0
    end = len(block)
    while start < end:
        stop = block.find(b"\n", start)
        if stop < 0:
            stop = end
        yield offset + start, block[start:stop]
        start = stop + 1


def count_lines(block: bytes) -> int:
    """Number of lines in a block from `read_blocks` (a last line without newline counts)."""
    if not block:
        return 0
    return block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
