"""Input splits: every line is read exactly once, by the split where it starts, in whole lines."""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mapreduce.splits import (
    auto_split_bytes,
    count_lines,
    expand_inputs,
    lines_with_offsets,
    make_splits,
    read_blocks,
)


def read_all(path: str, split_bytes: int, block_bytes: int) -> list[tuple[int, bytes]]:
    blocks = []
    for split in make_splits([path], split_bytes):
        for offset, block in read_blocks(split, block_bytes):
            assert offset >= split.start and offset < split.end, "a block starts outside its split"
            assert block.endswith(b"\n") or offset + len(block) == os.path.getsize(path)
            blocks.append((offset, block))
    return blocks


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"x")), max_size=25),
    st.booleans(),
    st.integers(1, 40),
    st.integers(1, 17),
)
def test_splits_cover_each_line_once(
    tmp_path_factory, lines, trailing_newline, split_bytes, block_bytes
):
    content = b"\n".join(lines) + (b"\n" if trailing_newline and lines else b"")
    path = tmp_path_factory.mktemp("splits") / "input.bin"
    path.write_bytes(content)
    blocks = read_all(str(path), split_bytes, block_bytes)
    assert b"".join(b for _, b in blocks) == content
    offsets = [o for o, _ in blocks]
    assert offsets == sorted(offsets)
    got = [line for offset, block in blocks for _, line in lines_with_offsets(offset, block)]
    expected = content.split(b"\n")
    if content.endswith(b"\n") or not content:
        expected = expected[:-1]
    assert got == expected
    assert sum(count_lines(b) for _, b in blocks) == len(expected)


def test_line_offsets_point_at_line_starts(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"one\ntwo\n\nfour")
    blocks = read_all(str(path), 3, 2)
    pairs = [(o, line) for offset, block in blocks for o, line in lines_with_offsets(offset, block)]
    assert pairs == [(0, b"one"), (4, b"two"), (8, b""), (9, b"four")]


def test_expand_inputs_and_errors(tmp_path):
    (tmp_path / "b.txt").write_text("b\n")
    (tmp_path / "a.txt").write_text("a\n")
    (tmp_path / ".hidden").write_text("h\n")
    assert expand_inputs([tmp_path]) == [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    with pytest.raises(ValueError, match="not a file or directory"):
        expand_inputs([tmp_path / "missing.txt"])
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(ValueError, match="no input files"):
        expand_inputs([empty])


def test_auto_split_depends_only_on_size():
    assert auto_split_bytes(0) == 1 << 20
    assert auto_split_bytes(200_000_000) == 50_000_000
    assert auto_split_bytes(10**12) == 128 << 20
