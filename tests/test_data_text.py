"""jaxml.data.text: corpus readers, byte-level BPE, split and deterministic packed batches."""

import json

import numpy as np
import pytest

from jaxml.data.text import (
    EOS,
    DataError,
    PackedSequences,
    TokenData,
    default_corpus,
    encode_documents,
    load_tokenizer,
    read_corpus,
    save_tokenizer,
    train_tokenizer,
    unigram_entropy,
)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(default_corpus().documents[:20], 300)


def test_default_corpus_is_cpython_docs():
    corpus = read_corpus(None)
    assert len(corpus.documents) > 50 and corpus.num_chars > 100_000
    assert any("statement" in d for d in corpus.documents)
    assert "pydoc_data" in corpus.describe()


def test_text_jsonl_tinystories_and_directory(tmp_path):
    (tmp_path / "a.txt").write_text("First document.\n")
    (tmp_path / "stories.txt").write_text(f"Once upon a time.{EOS}\nThe end.\n{EOS}\n")
    lines = [
        json.dumps({"text": "json one"}),
        "not json",
        json.dumps({"x": 1}),
        "",
        '{"text": "two"}',
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(lines))
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe binary")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / ".hidden.txt").write_text("never read")
    corpus = read_corpus(tmp_path)
    assert corpus.documents == (
        "First document.",
        "json one",
        "two",
        "Once upon a time.",
        "The end.",
    )
    assert corpus.skipped == {
        "JSONL lines without a text string": 2,
        "not UTF-8": 1,
        "empty": 1,
    }
    assert read_corpus(tmp_path / "stories.txt").documents == ("Once upon a time.", "The end.")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "no such file"),
        (b"", "empty"),
        (b"ok \xc3\x28", "not UTF-8 text \\(byte 0xc3 at offset 3\\)"),
    ],
)
def test_single_bad_file_is_a_clear_error(tmp_path, content, match):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=match):
        read_corpus(path)


def test_directory_without_text_is_an_error(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\x80\x81")
    with pytest.raises(DataError, match="no usable text.*1 not UTF-8"):
        read_corpus(tmp_path)
    (tmp_path / "x.jsonl").write_text('{"title": "no text"}\n')
    with pytest.raises(DataError, match="no usable text \\(skipped 1 JSONL lines"):
        read_corpus(tmp_path / "x.jsonl")


def test_tokenizer_round_trip_and_reload(tmp_path, tokenizer):
    assert tokenizer.get_vocab_size() == 300 and tokenizer.token_to_id(EOS) == 0
    text = 'The "if" statement — ünïcode ✓ is encoded without unknowns.'
    ids = tokenizer.encode(text).ids
    assert tokenizer.decode(ids) == text
    save_tokenizer(tokenizer, tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert again.encode(text).ids == ids
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match="not a tokenizers JSON"):
        load_tokenizer(tmp_path / "broken.json")
    with pytest.raises(DataError, match="vocab_size=100 is invalid"):
        train_tokenizer(["x"], 100)


def test_encode_appends_eos_per_document(tokenizer):
    ids = encode_documents(tokenizer, ["a b", "c"])
    assert ids.dtype == np.int32 and list(ids).count(0) == 2 and ids[-1] == 0


def test_packed_windows_shift_by_one():
    packed = PackedSequences(np.arange(23, dtype=np.int32), seq_len=5)
    assert len(packed) == 4  # windows need seq_len + 1 tokens: starts 0, 5, 10, 15
    np.testing.assert_array_equal(packed.rows(np.array([1])), [[5, 6, 7, 8, 9, 10]])
    assert [b.shape for b in packed.eval_rows(2)] == [(2, 6), (2, 6)]
    assert len(list(packed.eval_rows(2, max_batches=1))) == 1


def test_train_batches_depend_only_on_seed_and_step():
    packed = PackedSequences(np.arange(1001, dtype=np.int32), seq_len=10)  # 100 windows
    a = packed.train_rows(7, 16, seed=3)
    np.testing.assert_array_equal(a, packed.train_rows(7, 16, seed=3))
    assert not np.array_equal(a, packed.train_rows(7, 16, seed=4))
    assert not np.array_equal(a, packed.train_rows(8, 16, seed=3))
    # Each epoch (100 windows = 6.25 batches) visits every window exactly once.
    starts = np.concatenate([packed.train_rows(s, 20, seed=0)[:, 0] for s in range(5)])
    assert sorted(starts // 10) == list(range(100))


def test_token_data_split_and_baseline(tokenizer):
    corpus = default_corpus()
    data = TokenData.build(corpus, tokenizer, seq_len=32, val_fraction=0.1, seed=0)
    total = len(data.train.tokens) + len(data.val.tokens)
    assert abs(len(data.val.tokens) / total - 0.1) < 0.001
    assert data.vocab_size == 300
    same = TokenData.build(corpus, tokenizer, seq_len=32, val_fraction=0.1, seed=0)
    np.testing.assert_array_equal(same.val.tokens, data.val.tokens)
    entropy = unigram_entropy(data.train.tokens, data.vocab_size)
    assert 0 < entropy < np.log(300)
    assert unigram_entropy(np.zeros(10, np.int32), 4) == 0.0


def test_token_data_too_small_is_an_error(tokenizer):
    corpus = read_corpus(None).__class__(("tiny text",), "tiny")
    with pytest.raises(DataError, match="too short for one sequence"):
        TokenData.build(corpus, tokenizer, seq_len=64, val_fraction=0.5, seed=0)
    with pytest.raises(DataError, match="val_fraction=1.0 is invalid"):
        TokenData.build(corpus, tokenizer, seq_len=4, val_fraction=1.0, seed=0)
