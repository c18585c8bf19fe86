"""What a MapReduce job is: plain functions plus the knobs of one run.

A `Job` is `map(record) -> [(key, value), ...]`, an optional `combine(key, values) -> value`
applied inside each map task, and `reduce(key, values) -> value` applied to each key of a reduce
partition in sorted key order. Keys must be mutually orderable (one type per job). Jobs travel to
worker processes by pickle, so every function must be a top-level function (or a picklable object
such as `functools.partial` of one), never a lambda or a closure.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Pair = tuple[Any, Any]
Rows = list[Pair]
Partitioner = Callable[[Any, int], int]

INPUT_FORMATS = ("text", "jsonl")
OUTPUT_FORMATS = ("tsv", "json")


def check_encoding(name: str) -> str:
    """The canonical name of codec `name`, which must encode newline as the one byte `\\n`
    (UTF-8, Latin-1, cp1252, ...): splits are cut at newline bytes, so UTF-16/32 cannot be split."""
    try:
        canonical = codecs.lookup(name).name
    except LookupError:
        raise ValueError(f"unknown encoding {name!r}") from None
    if "\n\ta".encode(canonical) != b"\n\ta":
        raise ValueError(
            f"encoding {name!r} is not ASCII-compatible; input splits need one-byte newlines"
        )
    return canonical


@dataclass(frozen=True)
class InMapperCombiner:
    """Optional fast path of a map task: consume whole blocks of input lines instead of records.

    `init() -> acc`, `update(acc, block)` with `block` a run of complete, valid UTF-8 text lines
    (input in another `JobConfig.encoding` is transcoded to UTF-8 first),
    `size(acc)` the number of buffered entries (the task spills when it exceeds the limit), and
    `emit(acc) -> (pairs, n)`: the combined pairs (a mapping key -> value, or `(key, value)`
    pairs), equal to applying `combine` to what `map` emits for the same lines, and `n`, the number
    of pairs `map` itself would have emitted.
    """

    init: Callable[[], Any]
    update: Callable[[Any, bytes], None]
    size: Callable[[Any], int]
    emit: Callable[[Any], tuple[Mapping[Any, Any] | Iterable[Pair], int]]


@dataclass(frozen=True)
class Job:
    """A MapReduce job.

    `input_format` is "text" (a record is one line, decoded with `JobConfig.encoding`, newline
    stripped) or
    "jsonl" (a record is the object parsed from one non-blank line). `finalize(rows)` optionally
    rewrites one reduce partition's sorted `(key, reduce value)` rows (e.g. keep its top k);
    `merge([rows of partition 0, 1, ...])` optionally folds the partitions into the job's result.
    """

    name: str
    map: Callable[[Any], Iterable[Pair]]
    reduce: Callable[[Any, list[Any]], Any]
    combine: Callable[[Any, list[Any]], Any] | None = None
    input_format: str = "text"
    in_mapper: InMapperCombiner | None = None
    finalize: Callable[[Rows], Rows] | None = None
    merge: Callable[[Sequence[Rows]], Rows] | None = None

    def __post_init__(self) -> None:
        if self.input_format not in INPUT_FORMATS:
            raise ValueError(
                f"Job.input_format={self.input_format!r} is not allowed; use one of {INPUT_FORMATS}"
            )
        if self.in_mapper is not None and self.combine is None:
            raise ValueError(f"Job {self.name!r}: in_mapper needs a combine function too")
        if self.in_mapper is not None and self.input_format != "text":
            raise ValueError(f"Job {self.name!r}: in_mapper works on text input only")


@dataclass(frozen=True)
class FaultPlan:
    """Test hook that makes chosen task attempts fail on purpose.

    `crash` and `kill` hold `(phase, task_id)` pairs, phase "map" or "reduce". Attempts
    `1..attempts` of such a task raise `InjectedFault` (crash) or SIGKILL their own worker process
    (kill) mid-task: a map attempt after its first input block, a reduce attempt after reducing
    and before writing its output.
    """

    crash: frozenset[tuple[str, int]] = frozenset()
    kill: frozenset[tuple[str, int]] = frozenset()
    attempts: int = 1

    def action(self, phase: str, task_id: int, attempt: int) -> Literal["crash", "kill"] | None:
        if attempt > self.attempts:
            return None
        if (phase, task_id) in self.kill:
            return "kill"
        if (phase, task_id) in self.crash:
            return "crash"
        return None


@dataclass(frozen=True)
class JobConfig:
    """Knobs of one run. Output depends only on the job, the input, `encoding`,
    `num_partitions` and `split_bytes`, never on the executor or the number of workers.

    - `split_bytes`: input split size; None picks `auto_split_bytes(total input)`.
    - `block_bytes`: how much of a split a map task reads at once (whole lines).
    - `spill_records`: buffered map outputs (or in-mapper entries) that trigger a spill to disk.
    - `reduce_memory_bytes`: a reduce partition whose shuffle files are larger is merged as a
      stream (heap merge) instead of sorted in memory.
    - `max_attempts`: attempts per task before the job fails.
    - `record_attempts`: calls of `map` on one record before it is skipped as bad.
    - `max_bad_records`: the job fails when more records than this are skipped (None: no limit).
    - `max_bad_fraction`: the job fails when more than this fraction of the input records are
      skipped (None: no limit). Like Hadoop's skip mode, skipping bounds the loss: a file in the
      wrong encoding, where every line is bad, fails instead of giving an empty result.
    - `encoding`: text input's codec (ASCII-compatible, see `check_encoding`); a line that does
      not decode is a bad record.
    - `bad_records_listed`: at most this many skipped records are listed in the report (all counted).
    """

    num_partitions: int = 4
    split_bytes: int | None = None
    block_bytes: int = 4 << 20
    spill_records: int = 1_000_000
    reduce_memory_bytes: int = 256 << 20
    max_attempts: int = 4
    record_attempts: int = 2
    max_bad_records: int | None = None
    max_bad_fraction: float | None = 0.01
    encoding: str = "utf-8"
    bad_records_listed: int = 100
    use_combiner: bool = True
    output_format: str = "tsv"
    faults: FaultPlan = field(default_factory=FaultPlan)

    def __post_init__(self) -> None:
        positive = {
            "num_partitions": self.num_partitions,
            "block_bytes": self.block_bytes,
            "spill_records": self.spill_records,
            "reduce_memory_bytes": self.reduce_memory_bytes,
            "max_attempts": self.max_attempts,
            "record_attempts": self.record_attempts,
        }
        if self.split_bytes is not None:
            positive["split_bytes"] = self.split_bytes
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"JobConfig.{name}={value!r} must be an integer >= 1")
        if self.max_bad_records is not None and self.max_bad_records < 0:
            raise ValueError(
                f"JobConfig.max_bad_records={self.max_bad_records!r} must be >= 0 or None"
            )
        if self.max_bad_fraction is not None and not 0 <= self.max_bad_fraction <= 1:
            raise ValueError(
                f"JobConfig.max_bad_fraction={self.max_bad_fraction!r} must be in [0, 1] or None"
            )
        try:
            check_encoding(self.encoding)
        except ValueError as exc:
            raise ValueError(f"JobConfig.encoding={self.encoding!r} is invalid: {exc}") from None
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(
                f"JobConfig.output_format={self.output_format!r} is not allowed; use one of {OUTPUT_FORMATS}"
            )
