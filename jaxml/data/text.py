"""Text for language models: a corpus, a byte-level BPE tokenizer, packed fixed-length batches.

- Corpus: `read_corpus(None)` is the English documentation that ships inside every CPython
  (`pydoc_data.topics`: 79 reference topics, ~465k characters), so nothing needs downloading.
  `read_corpus(PATH)` reads a text file, a JSONL file (`text` field per line), a directory of
  those, or TinyStories release files (stories separated by `<|endoftext|>`).
- Tokenizer: byte-level BPE trained with Hugging Face `tokenizers`; `<|endoftext|>` (id 0)
  ends every document. Saved as one `tokenizer.json` and reloaded from it.
- `TokenData`: documents in a seed-determined order, tokenized and concatenated, split into a
  train and a validation stream, each cut into sequences of `seq_len + 1` tokens. The rows of
  training step `s` depend only on `(seed, s)`, so a resumed run sees the batches it would have.

Framework-neutral numpy (torchref reads it too).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS = "<|endoftext|>"
MIN_VOCAB = 257  # the 256 byte symbols + EOS
JSONL_SUFFIXES = (".jsonl", ".json")
BAD_JSONL = "JSONL lines without a text string"


class DataError(ValueError):
    """A corpus or tokenizer that cannot be used; the message names the path and the reason."""


class UnusableFile(DataError):
    """One file without usable text; `reason` is its short skip category (e.g. `"empty"`)."""

    def __init__(self, path: Path, detail: str, reason: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Corpus:
    """`documents` (non-empty strings, in reading order), where they came from, and what was
    skipped: `skipped` maps a reason (`"not UTF-8"`, `"empty"`, ...) to a count."""

    documents: tuple[str, ...]
    source: str
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def num_chars(self) -> int:
        return sum(len(d) for d in self.documents)

    def describe(self) -> str:
        text = f"{self.source}: {len(self.documents)} documents, {self.num_chars:,} characters"
        return text + (f" (skipped {_counts(self.skipped)})" if self.skipped else "")


def default_corpus() -> Corpus:
    """CPython's own documentation topics (`pydoc_data.topics`), sorted by topic name."""
    from pydoc_data.topics import topics

    docs = tuple(topics[name].strip() for name in sorted(topics) if topics[name].strip())
    return Corpus(docs, "pydoc_data.topics (CPython documentation)")


def read_corpus(path: str | Path | None) -> Corpus:
    """The default corpus for `None`, else the documents of the file or directory at `path`.

    A single unusable file is a `DataError`; inside a directory, unreadable files, undecodable
    files and bad JSONL lines are skipped and counted. A corpus without any text is an error.
    """
    if path is None:
        return default_corpus()
    root = Path(path)
    skipped: dict[str, int] = {}
    if root.is_dir():
        docs: list[str] = []
        files = sorted(p for p in root.rglob("*") if p.is_file() and not _hidden(p, root))
        for file in files:
            try:
                docs.extend(_read_file(file, skipped))
            except UnusableFile as err:
                skipped[err.reason] = skipped.get(err.reason, 0) + 1
        if not docs:
            detail = f"skipped {_counts(skipped)}" if skipped else "no files"
            raise DataError(f"{root}: no usable text in this directory ({detail})")
        return Corpus(tuple(docs), str(root), skipped)
    if not root.exists():
        raise DataError(f"{root}: no such file or directory")
    if not root.is_file():
        raise DataError(f"{root}: not a regular file or directory")
    docs = _read_file(root, skipped)
    if not docs:
        raise DataError(f"{root}: no usable text (skipped {_counts(skipped)})")
    return Corpus(tuple(docs), str(root), skipped)


def _counts(skipped: dict[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in skipped.items())


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _read_file(path: Path, skipped: dict[str, int]) -> list[str]:
    """The documents of one file: JSONL lines' `text`, else `EOS`-separated text."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise UnusableFile(path, f"cannot be read ({err.strerror})", "unreadable") from err
    if not raw.strip():
        raise UnusableFile(path, "the file is empty", "empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        detail = f"not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start})"
        raise UnusableFile(path, detail, "not UTF-8") from err
    if path.suffix.lower() in JSONL_SUFFIXES:
        return _jsonl_documents(text, skipped)
    return [doc.strip() for doc in text.split(EOS) if doc.strip()]


def _jsonl_documents(text: str, skipped: dict[str, int]) -> list[str]:
    docs = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        value = record.get("text") if isinstance(record, dict) else None
        if isinstance(value, str) and value.strip():
            docs.append(value.strip())
        else:
            skipped[BAD_JSONL] = skipped.get(BAD_JSONL, 0) + 1
    return docs


# --- tokenizer ---------------------------------------------------------------------------------


def train_tokenizer(documents: Sequence[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE with `vocab_size` entries (EOS is id 0); every byte is in the alphabet, so
    any text encodes without unknown tokens."""
    if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB:
        raise DataError(f"vocab_size={vocab_size!r} is invalid: must be an integer >= {MIN_VOCAB}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer)
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, path: str | Path) -> None:
    """Write `tokenizer.json` atomically (a temporary file renamed into place)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tokenizer.save(str(tmp))
    tmp.replace(path)


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no tokenizer file")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception on malformed JSON
        raise DataError(f"{path}: not a tokenizers JSON file ({err})") from err


def encode_documents(tokenizer: Tokenizer, documents: Sequence[str]) -> np.ndarray:
    """All documents, each followed by EOS, as one int32 token stream."""
    eos = tokenizer.token_to_id(EOS)
    if eos is None:
        raise DataError(f"the tokenizer has no {EOS} token")
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(list(documents)):
        ids.extend(encoding.ids)
        ids.append(eos)
    return np.asarray(ids, np.int32)


def unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
    """Entropy (nats per token) of the token frequencies: the loss of the best model that
    ignores context, the baseline a language model has to beat."""
    counts = np.bincount(tokens, minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


# --- packed batches ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PackedSequences:
    """A token stream cut into `len(self)` back-to-back windows of `seq_len + 1` tokens
    (window `i` starts at `i * seq_len`: inputs are its first `seq_len`, targets its last)."""

    tokens: np.ndarray
    seq_len: int

    def __len__(self) -> int:
        return max(0, (len(self.tokens) - 1) // self.seq_len)

    def rows(self, index: np.ndarray) -> np.ndarray:
        """`[len(index), seq_len + 1]` int32 windows."""
        starts = np.asarray(index, np.int64)[:, None] * self.seq_len
        return self.tokens[starts + np.arange(self.seq_len + 1)]

    def train_rows(self, step: int, batch_size: int, seed: int) -> np.ndarray:
        """The `[batch_size, seq_len + 1]` global batch of training step `step`.

        Examples are drawn without replacement in epochs: global example `g = step * batch_size
        + j` is window `permutation(seed, g // len)[g % len]`, so the batch depends only on
        `(seed, step, batch_size)`.
        """
        n = len(self)
        g = step * batch_size + np.arange(batch_size, dtype=np.int64)
        epochs = g // n
        index = np.empty(batch_size, np.int64)
        for epoch in np.unique(epochs):
            order = np.random.default_rng((seed, int(epoch))).permutation(n)
            chosen = epochs == epoch
            index[chosen] = order[g[chosen] % n]
        return self.rows(index)

    def eval_rows(self, batch_size: int, max_batches: int | None = None) -> Iterator[np.ndarray]:
        """Every window in order, in full batches of `batch_size` (at most `max_batches`)."""
        batches = len(self) // batch_size
        if max_batches is not None:
            batches = min(batches, max_batches)
        for b in range(batches):
            yield self.rows(np.arange(b * batch_size, (b + 1) * batch_size))


@dataclass(frozen=True)
class TokenData:
    """Train and validation `PackedSequences` of one tokenized corpus."""

    train: PackedSequences
    val: PackedSequences
    vocab_size: int

    @classmethod
    def build(
        cls,
        corpus: Corpus,
        tokenizer: Tokenizer,
        *,
        seq_len: int,
        val_fraction: float,
        seed: int,
    ) -> TokenData:
        """Shuffle the documents with `seed`, tokenize, and hold out the last `val_fraction`
        of the token stream for validation. Raises `DataError` when either side cannot fill
        one sequence of `seq_len + 1` tokens."""
        if not 0.0 < val_fraction < 1.0:
            raise DataError(f"val_fraction={val_fraction!r} is invalid: must be in (0, 1)")
        order = np.random.default_rng(seed).permutation(len(corpus.documents))
        tokens = encode_documents(tokenizer, [corpus.documents[i] for i in order])
        cut = len(tokens) - math.ceil(len(tokens) * val_fraction)
        data = cls(
            PackedSequences(tokens[:cut], seq_len),
            PackedSequences(tokens[cut:], seq_len),
            tokenizer.get_vocab_size(),
        )
        for name, side in (("training", data.train), ("validation", data.val)):
            if len(side) == 0:
                raise DataError(
                    f"{corpus.source}: {len(tokens)} tokens leave the {name} split "
                    f"({len(side.tokens)} tokens) too short for one sequence of "
                    f"seq_len + 1 = {seq_len + 1} tokens; use more text or a smaller --seq_len"
                )
        return data

    def digest(self) -> str:
        """A short sha256 of the train and validation tokens: equal digests, equal data."""
        h = hashlib.sha256(self.train.tokens.tobytes())
        h.update(self.val.tokens.tobytes())
        return h.hexdigest()[:16]
