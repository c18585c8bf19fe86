"""The one tokenizer used by every word-statistics job.

Definition: case-fold the text with `str.casefold()` (full Unicode case folding, so "Straße" and
"STRASSE" both become "strasse"), then a word is a maximal run of Unicode word characters, i.e.
the regular expression `\\w+` (letters, digits and underscore in any script). Everything else
(spaces, punctuation, symbols, combining marks on their own) separates words.

`tokenize` is the readable reference. `BytesWordCounter` computes the same counts from raw UTF-8
bytes much faster: ASCII bytes are folded and split with one `bytes.translate` + `bytes.split`,
and only the distinct tokens that contain non-ASCII bytes are decoded and re-tokenized with
`tokenize`. That is exact because every ASCII byte outside `[A-Za-z0-9_]` is a separator in both
versions and case folding maps each character on its own.
"""

from __future__ import annotations

import re
from collections import Counter

WORD_RE = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """Words of `text`: `\\w+` runs of `text.casefold()`, in order."""
    return WORD_RE.findall(text.casefold())


def _ascii_fold_table() -> bytes:
    table = bytearray(range(256))
    for byte in range(128):
        char = chr(byte)
        if char.isupper():
            table[byte] = ord(char.lower())
        elif not (char.isalnum() or char == "_"):
            table[byte] = ord(" ")
    return bytes(table)  # bytes >= 0x80 (parts of UTF-8 sequences) stay and are fixed up later


_ASCII_FOLD = _ascii_fold_table()
_NON_ASCII_LINE = re.compile(r"^.*[^\x00-\x7f].*$", re.MULTILINE)


class BytesWordCounter:
    """Word counts of UTF-8 blocks, equal to `Counter(tokenize(block.decode()))` summed over blocks."""

    def __init__(self) -> None:
        self.counts: Counter[bytes] = Counter()

    def add(self, block: bytes) -> None:
        """Count the words of `block`, which must be valid UTF-8 (lines are never split mid-character)."""
        self.counts.update(block.translate(_ASCII_FOLD).split())

    def words(self) -> dict[str, int]:
        """The counts so far keyed by word (decoded, case-folded, non-ASCII tokens re-split)."""
        tokens = b"\n".join(self.counts).decode("utf-8")
        result = (
            dict(zip(tokens.split("\n"), self.counts.values(), strict=True)) if self.counts else {}
        )
        for raw in _NON_ASCII_LINE.findall(tokens):
            words = tokenize(raw)
            if words != [raw]:
                count = result.pop(raw)
                for word in words:
                    result[word] = result.get(word, 0) + count
        return result
