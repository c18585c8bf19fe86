"""Word-statistics jobs over text files, all built on `mapreduce.tokenizer.tokenize`.

- `word_count`: map emits `(word, 1)`, reduce sums -> `word -> count`.
- `sum_of_word_lengths`: map emits `("sum_of_word_lengths", len(word))`, reduce sums -> one row.
- `average_word_length`: map emits `("average_word_length", (len(word), 1))`, the combiner adds
  both parts, reduce divides -> one row, the mean word length.
- `topk`: word counts, then a top-k heap per reduce partition, merged -> `k` rows, most frequent
  first (ties by word).
- `freq_count`: word counts, then per partition how many words have each count, merged ->
  `count -> number of words` (frequency of frequencies).

Every job also has an in-mapper combiner (`BytesWordCounter`) that counts whole blocks of raw
bytes at C speed and gives exactly the pairs that map + combine would.
"""

from __future__ import annotations

import functools
import heapq
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from mapreduce.job import InMapperCombiner, Job, JobConfig, Pair, Rows
from mapreduce.tokenizer import BytesWordCounter, tokenize

SUM_KEY = "sum_of_word_lengths"
AVERAGE_KEY = "average_word_length"


# ---------------------------------------------------------------------------- shared pieces
def sum_values(key: Any, values: list[Any]) -> Any:
    """Combiner and reducer of counts: their sum."""
    return sum(values)


def new_counter() -> BytesWordCounter:
    return BytesWordCounter()


def add_block(counter: BytesWordCounter, block: bytes) -> None:
    counter.add(block)


def counter_size(counter: BytesWordCounter) -> int:
    return len(counter.counts)


# ---------------------------------------------------------------------------- word_count (topk, freq_count)
def word_count_map(line: str) -> list[Pair]:
    return [(word, 1) for word in tokenize(line)]


def word_count_emit(counter: BytesWordCounter) -> tuple[dict[str, int], int]:
    words = counter.words()
    return words, sum(words.values())


# ---------------------------------------------------------------------------- sum_of_word_lengths
def word_length_map(line: str) -> list[Pair]:
    return [(SUM_KEY, len(word)) for word in tokenize(line)]


def word_length_emit(counter: BytesWordCounter) -> tuple[Iterable[Pair], int]:
    words = counter.words()
    n = sum(words.values())
    return ([(SUM_KEY, sum(len(w) * c for w, c in words.items()))] if n else []), n


# ---------------------------------------------------------------------------- average_word_length
def length_count_map(line: str) -> list[Pair]:
    return [(AVERAGE_KEY, (len(word), 1)) for word in tokenize(line)]


def sum_pairs(key: Any, values: list[tuple[int, int]]) -> tuple[int, int]:
    return sum(v[0] for v in values), sum(v[1] for v in values)


def average_reduce(key: Any, values: list[tuple[int, int]]) -> float:
    total, count = sum_pairs(key, values)
    return total / count


def length_count_emit(counter: BytesWordCounter) -> tuple[Iterable[Pair], int]:
    words = counter.words()
    n = sum(words.values())
    return ([(AVERAGE_KEY, (sum(len(w) * c for w, c in words.items()), n))] if n else []), n


# ---------------------------------------------------------------------------- topk
def _rank(row: Pair) -> tuple[int, str]:
    return -row[1], row[0]


def top_k_rows(rows: Rows, k: int) -> Rows:
    """The `k` most frequent rows of one partition (ties broken by word), most frequent first."""
    return heapq.nsmallest(k, rows, key=_rank)


def merge_top_k(partitions: Sequence[Rows], k: int) -> Rows:
    return heapq.nsmallest(k, (row for rows in partitions for row in rows), key=_rank)


# ---------------------------------------------------------------------------- freq_count
def frequency_of_frequencies(rows: Rows) -> Rows:
    """`(count, number of words with that count)` for one partition, by count."""
    return sorted(Counter(count for _, count in rows).items())


def merge_frequencies(partitions: Sequence[Rows]) -> Rows:
    total: Counter[int] = Counter()
    for rows in partitions:
        for count, words in rows:
            total[count] += words
    return sorted(total.items())


# ---------------------------------------------------------------------------- registry
def _fast(emit: Callable[[BytesWordCounter], tuple[Any, int]]) -> InMapperCombiner:
    return InMapperCombiner(new_counter, add_block, counter_size, emit)


def word_count_job() -> Job:
    return Job(
        "word_count", word_count_map, sum_values, sum_values, in_mapper=_fast(word_count_emit)
    )


def sum_of_word_lengths_job() -> Job:
    return Job(
        "sum_of_word_lengths",
        word_length_map,
        sum_values,
        sum_values,
        in_mapper=_fast(word_length_emit),
    )


def average_word_length_job() -> Job:
    return Job(
        "average_word_length",
        length_count_map,
        average_reduce,
        sum_pairs,
        in_mapper=_fast(length_count_emit),
    )


def topk_job(k: int = 10) -> Job:
    if k < 1:
        raise ValueError(f"topk k={k} must be >= 1")
    return Job(
        "topk",
        word_count_map,
        sum_values,
        sum_values,
        in_mapper=_fast(word_count_emit),
        finalize=functools.partial(top_k_rows, k=k),
        merge=functools.partial(merge_top_k, k=k),
    )


def freq_count_job() -> Job:
    return Job(
        "freq_count",
        word_count_map,
        sum_values,
        sum_values,
        in_mapper=_fast(word_count_emit),
        finalize=frequency_of_frequencies,
        merge=merge_frequencies,
    )


JOBS: dict[str, Callable[..., Job]] = {
    "word_count": word_count_job,
    "sum_of_word_lengths": sum_of_word_lengths_job,
    "average_word_length": average_word_length_job,
    "topk": topk_job,
    "freq_count": freq_count_job,
}


def get_job(name: str, k: int = 10) -> Job:
    """A word-statistics job by name (`k` is used by `topk` only)."""
    if name not in JOBS:
        raise ValueError(f"unknown job {name!r}; use one of {', '.join(JOBS)}")
    return topk_job(k) if name == "topk" else JOBS[name]()


def get_words_stats_in_file(
    files: Sequence[str | os.PathLike[str]],
    stat: str = "word_count",
    *,
    engine: str = "sequential",
    workers: int | None = None,
    num_partitions: int = 4,
    k: int = 10,
    use_shuffle: bool = False,
) -> Any:
    """One word statistic of `files`, as Python values (the original framework's entry point).

    word_count -> {word: count}; sum_of_word_lengths -> int; average_word_length -> float
    (0.0 without words); topk -> [(word, count), ...]; freq_count -> {count: words}.
    `use_shuffle` prints what the shuffle moved.
    """
    from mapreduce.engine import run_job
    from mapreduce.report import shuffle_report

    job = get_job(stat, k)
    config = JobConfig(num_partitions=num_partitions, output_format="json")
    with tempfile.TemporaryDirectory(prefix="mapreduce-stats-") as out:
        result = run_job(job, files, out, executor=engine, workers=workers, config=config)
        rows = list(result.records())
    if use_shuffle:
        print(shuffle_report(result.report))
    if stat == "word_count":
        return dict(sorted(rows))
    if stat in ("sum_of_word_lengths", "average_word_length"):
        return rows[0][1] if rows else (0 if stat == "sum_of_word_lengths" else 0.0)
    if stat == "topk":
        return [(word, count) for word, count in rows]
    return {int(count): words for count, words in rows}
