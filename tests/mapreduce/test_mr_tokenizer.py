"""The tokenizer: documented examples, and the fast byte counter equals the reference exactly."""

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from mapreduce.tokenizer import BytesWordCounter, tokenize


def test_tokenize_casefolds_and_splits_on_non_word_characters():
    text = "Straße STRASSE, don't\tCafé—BAR naïve_42 ΣΊΣΥΦΟΣ σίσυφος ﬀ"
    assert tokenize(text) == [
        "strasse",
        "strasse",
        "don",
        "t",
        "café",
        "bar",
        "naïve_42",
        "σίσυφοσ",  # full case folding maps final sigma to sigma: both spellings agree
        "σίσυφοσ",
        "ff",
    ]


def test_tokenize_empty_and_punctuation_only():
    assert tokenize("") == []
    assert tokenize(" \t--- ... \r\n") == []


def counted(blocks: list[bytes]) -> dict[str, int]:
    counter = BytesWordCounter()
    for block in blocks:
        counter.add(block)
    return counter.words()


def test_bytes_counter_matches_reference_on_mixed_scripts():
    lines = [
        "Hello, WORLD! hello",
        "Ünïcödé ÜNÏCÖDÉ — ǅemal İstanbul",
        "ÀB\u00a0cd x\u0301y",
        "a_b 12 ab12\r",
    ]
    text = "\n".join(lines) + "\n"
    assert counted([text.encode()]) == dict(Counter(tokenize(text)))


alphabet = st.sampled_from(list("aZ zé ÉßẞİıΣσς—\u00a0\u0301_9\t.,'ﬀǅ日本\r") + ["\n"])


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=alphabet, max_size=200), st.integers(0, 6))
def test_bytes_counter_equals_tokenize_on_random_unicode(text, cuts):
    lines = text.split("\n")
    step = max(1, len(lines) // (cuts + 1))
    blocks = ["\n".join(lines[i : i + step]) + "\n" for i in range(0, len(lines), step)]
    assert counted([b.encode() for b in blocks]) == dict(Counter(tokenize(text)))
