"""Map and reduce tasks: the code that runs on workers.

Both are top-level functions of one picklable argument so every executor (in-process, a local
process pool, a Dask cluster) can run them. Each execution claims a fresh attempt number from
the work directory (`attempts/<task>.<n>`, created with O_EXCL), works in a private scratch
location, and commits with one atomic filesystem operation; a later execution that finds the
task already committed discards its own output and reports itself as a duplicate. The work and
output directories must therefore be visible to every worker (one machine, or a shared mount).

Map: read the split in blocks of whole lines -> map (or the in-mapper combiner) -> buffer ->
combine + partition + sort + write one sorted run file per partition whenever the buffer holds
`spill_records` entries, and once at the end -> rename the scratch directory to `map-NNNNN`.

Reduce: gather partition r's runs from every map task -> sort by key (in memory, or a streaming
heap merge above `reduce_memory_bytes`) -> `reduce(key, values)` per key in key order ->
optional `finalize` -> write `.part-RRRRR.*.attempt-N` -> hard-link it to `part-RRRRR.*`.
"""

from __future__ import annotations

import codecs
import heapq
import json
import os
import pickle
import shutil
import signal
import socket
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import compress, groupby
from operator import itemgetter
from typing import Any

from mapreduce.job import Job, JobConfig, Pair, Partitioner, Rows
from mapreduce.output import suffix, write_rows
from mapreduce.partitioning.partitioners import hash_partitioner
from mapreduce.splits import Split, count_lines, lines_with_offsets, read_blocks

RUN_CHUNK = 65536  # pairs per pickle frame (a keys list, a values list), so runs stream back
_FIRST = itemgetter(0)
_SECOND = itemgetter(1)


class InjectedFault(RuntimeError):
    """Raised by a task attempt that `FaultPlan` told to crash."""


@dataclass(frozen=True)
class MapTask:
    task_id: int
    split: Split
    job: Job
    partitioner: Partitioner
    config: JobConfig
    work_dir: str


@dataclass(frozen=True)
class ReduceTask:
    partition: int
    runs: tuple[str, ...]
    job: Job
    config: JobConfig
    work_dir: str
    output_dir: str


@dataclass
class TaskOutput:
    """What a task attempt reports back. `partition_*` lists are per reduce partition (map tasks);
    `rows` is the finalized partition, returned only for jobs with a `merge`."""

    phase: str
    task_id: int
    attempt: int
    duplicate: bool
    seconds: float
    worker: str
    counters: dict[str, int]
    runs: list[list[str]] = field(default_factory=list)
    partition_records: list[int] = field(default_factory=list)
    partition_bytes: list[int] = field(default_factory=list)
    bad_records: list[dict[str, Any]] = field(default_factory=list)
    output_file: str | None = None
    rows: Rows | None = None


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def claim_attempt(work_dir: str, name: str) -> int:
    """Next attempt number of task `name`, unique across every process sharing `work_dir`."""
    attempt = 1
    while True:
        try:
            fd = os.open(
                os.path.join(work_dir, "attempts", f"{name}.{attempt}"), os.O_CREAT | os.O_EXCL
            )
        except FileExistsError:
            attempt += 1
            continue
        os.close(fd)
        return attempt


def _inject(config: JobConfig, phase: str, task_id: int, attempt: int) -> None:
    action = config.faults.action(phase, task_id, attempt)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "crash":
        raise InjectedFault(f"injected crash: {phase} task {task_id} attempt {attempt}")


class _Spiller:
    """Partitions, sorts and writes buffered pairs as one run file per non-empty partition."""

    def __init__(self, task: MapTask, scratch: str):
        self.partitioner = task.partitioner
        self.num_partitions = task.config.num_partitions
        self.scratch = scratch
        self.runs: list[list[str]] = [[] for _ in range(self.num_partitions)]
        self.records = [0] * self.num_partitions
        self.bytes = [0] * self.num_partitions
        self.spills = 0

    def _partitions(self, keys: list[Any]) -> list[int]:
        num_partitions = self.num_partitions
        if self.partitioner is hash_partitioner:
            try:  # the default partitioner on str keys, inlined: same value as stable_hash
                return [zlib.crc32(k.encode("utf-8")) % num_partitions for k in keys]
            except AttributeError:
                pass
        partitioner = self.partitioner
        parts = [partitioner(k, num_partitions) for k in keys]
        if parts and not (0 <= min(parts) and max(parts) < num_partitions):
            bad = next(p for p in parts if not 0 <= p < num_partitions)
            raise ValueError(f"partitioner returned {bad!r}; must be in [0, {num_partitions})")
        return parts

    def write(self, pairs: Mapping[Any, Any] | list[Pair]) -> None:
        """Spill combined pairs (a mapping: one value per key) or raw pairs (keys may repeat)."""
        if isinstance(pairs, Mapping):
            keys = sorted(pairs)
            values = list(map(pairs.__getitem__, keys))
        else:
            pairs.sort(key=_FIRST)  # stable: equal keys keep their emission order
            keys = list(map(_FIRST, pairs))
            values = list(map(_SECOND, pairs))
        parts = self._partitions(keys)
        for r in range(self.num_partitions):
            mask = list(map(r.__eq__, parts))
            part_keys = list(compress(keys, mask))
            if not part_keys:
                continue
            part_values = list(compress(values, mask))
            name = f"part-{r:05d}-run-{self.spills:04d}.pkl"
            with open(os.path.join(self.scratch, name), "wb") as f:
                for i in range(0, len(part_keys), RUN_CHUNK):
                    chunk = (part_keys[i : i + RUN_CHUNK], part_values[i : i + RUN_CHUNK])
                    pickle.dump(chunk, f, protocol=pickle.HIGHEST_PROTOCOL)
                self.bytes[r] += f.tell()
            self.runs[r].append(name)
            self.records[r] += len(part_keys)
        self.spills += 1


class _MapState:
    """Per-attempt map buffer and counters."""

    def __init__(self, task: MapTask, scratch: str):
        self.task = task
        self.job = task.job
        self.config = task.config
        self.combine = task.job.combine if task.config.use_combiner else None
        self.encoding = task.config.encoding
        self.utf8 = codecs.lookup(self.encoding).name == "utf-8"
        self.spiller = _Spiller(task, scratch)
        self.fast = task.job.in_mapper if task.config.use_combiner else None
        self.acc = self.fast.init() if self.fast else None
        self.buffer: dict[Any, list[Any]] = {}
        self.buffered = 0
        self.counters = {
            "records_in": 0,
            "records_processed": 0,
            "records_skipped": 0,
            "bytes_in": 0,
            "map_output_records": 0,
        }
        self.bad_records: list[dict[str, Any]] = []

    # ---------------------------------------------------------------- bad records
    def skip(self, offset: int, line: bytes, reason: str) -> None:
        self.counters["records_skipped"] += 1
        if len(self.bad_records) < self.config.bad_records_listed:
            self.bad_records.append(
                {
                    "task": self.task.task_id,
                    "path": self.task.split.path,
                    "offset": offset,
                    "reason": reason,
                    "preview": line[:80].decode("utf-8", "backslashreplace"),
                }
            )

    # ---------------------------------------------------------------- input
    def add_block(self, offset: int, block: bytes) -> None:
        self.counters["bytes_in"] += len(block)
        if self.fast is not None:
            self._add_block_fast(offset, block)
        else:
            for line_offset, line in lines_with_offsets(offset, block):
                self._add_line(line_offset, line)

    def _add_block_fast(self, offset: int, block: bytes) -> None:
        assert self.fast is not None
        lines = count_lines(block)
        self.counters["records_in"] += lines
        bad = 0
        if not block.isascii():
            block, bad = self._as_utf8(offset, block)
        self.counters["records_processed"] += lines - bad
        self.fast.update(self.acc, block)
        if self.fast.size(self.acc) >= self.config.spill_records:
            self._spill_fast()

    def _as_utf8(self, offset: int, block: bytes) -> tuple[bytes, int]:
        """The block as UTF-8 without its undecodable lines (each skipped and listed), and the
        number of lines dropped."""
        try:
            text = block.decode(self.encoding)
        except UnicodeDecodeError:
            pass
        else:
            return (block if self.utf8 else text.encode("utf-8")), 0
        good: list[bytes] = []
        bad = 0
        for line_offset, line in lines_with_offsets(offset, block):
            try:
                text = line.decode(self.encoding)
            except UnicodeDecodeError as exc:
                self.skip(
                    line_offset, line, f"UnicodeDecodeError: {exc.reason} at byte {exc.start}"
                )
                bad += 1
            else:
                good.append(line if self.utf8 else text.encode("utf-8"))
        return b"\n".join(good) + b"\n", bad

    def _parse(self, line: bytes) -> Any:
        if self.job.input_format == "jsonl":
            return json.loads(line if self.utf8 else line.decode(self.encoding))
        return line.decode(self.encoding).removesuffix("\r")

    def _add_line(self, offset: int, line: bytes) -> None:
        if self.job.input_format == "jsonl" and not line.strip():
            return  # blank lines of a JSONL file are not records
        self.counters["records_in"] += 1
        try:
            record = self._parse(line)
        except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            self.skip(offset, line, f"{type(exc).__name__}: {exc}")
            return
        for _ in range(self.config.record_attempts):
            try:
                pairs = list(self.job.map(record))
                break
            except Exception as exc:  # a record that keeps failing is skipped, not fatal
                error = exc
        else:
            self.skip(offset, line, f"map failed {self.config.record_attempts}x: {error!r}")
            return
        self.counters["records_processed"] += 1
        self.counters["map_output_records"] += len(pairs)
        buffer = self.buffer
        for key, value in pairs:
            values = buffer.get(key)
            if values is None:
                buffer[key] = [value]
            else:
                values.append(value)
        self.buffered += len(pairs)
        if self.buffered >= self.config.spill_records:
            self._spill_buffer()

    # ---------------------------------------------------------------- spills
    def _spill_fast(self) -> None:
        assert self.fast is not None
        pairs, emitted = self.fast.emit(self.acc)
        self.counters["map_output_records"] += emitted
        self.spiller.write(pairs if isinstance(pairs, Mapping) else list(pairs))
        self.acc = self.fast.init()

    def _spill_buffer(self) -> None:
        combine = self.combine
        if combine is not None:
            self.spiller.write({k: combine(k, vs) for k, vs in self.buffer.items()})
        else:
            self.spiller.write([(k, v) for k, vs in self.buffer.items() for v in vs])
        self.buffer = {}
        self.buffered = 0

    def flush(self) -> None:
        if self.fast is not None and self.fast.size(self.acc):
            self._spill_fast()
        if self.buffered:
            self._spill_buffer()


def run_map_task(task: MapTask) -> TaskOutput:
    """Run one attempt of a map task and commit its sorted, partitioned runs."""
    start = time.perf_counter()
    name = f"map-{task.task_id:05d}"
    attempt = claim_attempt(task.work_dir, name)
    final = os.path.join(task.work_dir, name)
    scratch = f"{final}.attempt-{attempt}"
    os.makedirs(scratch)
    state = _MapState(task, scratch)
    injected = False
    for offset, block in read_blocks(task.split, task.config.block_bytes):
        state.add_block(offset, block)
        if not injected:
            _inject(task.config, "map", task.task_id, attempt)
            injected = True
    if not injected:
        _inject(task.config, "map", task.task_id, attempt)
    state.flush()
    spiller = state.spiller
    counters = dict(state.counters, spills=spiller.spills, shuffle_records=sum(spiller.records))
    counters["shuffle_bytes"] = sum(spiller.bytes)
    with open(os.path.join(scratch, "_COMMITTED"), "w") as f:
        json.dump({"attempt": attempt, "split": str(task.split), "counters": counters}, f)
    duplicate = False
    try:
        os.rename(scratch, final)
    except OSError:
        if not os.path.exists(os.path.join(final, "_COMMITTED")):
            raise
        shutil.rmtree(scratch)  # another attempt committed first: keep its (identical) output
        duplicate = True
    return TaskOutput(
        phase="map",
        task_id=task.task_id,
        attempt=attempt,
        duplicate=duplicate,
        seconds=time.perf_counter() - start,
        worker=worker_name(),
        counters=counters,
        runs=[[os.path.join(final, n) for n in names] for names in spiller.runs],
        partition_records=spiller.records,
        partition_bytes=spiller.bytes,
        bad_records=state.bad_records,
    )


def _run_chunks(path: str) -> Iterator[Iterator[Pair]]:
    """The pickled `(keys, values)` frames of a run file, each as an iterator of pairs."""
    with open(path, "rb") as f:
        while True:
            try:
                keys, values = pickle.load(f)
            except EOFError:
                return
            yield zip(keys, values, strict=True)


def _read_run(path: str) -> Iterator[Pair]:
    for chunk in _run_chunks(path):
        yield from chunk


def _sorted_pairs(runs: tuple[str, ...], memory_bytes: int) -> Iterable[Pair]:
    """All pairs of a partition in key order; equal keys keep run order (map task, then spill)."""
    if sum(os.path.getsize(r) for r in runs) <= memory_bytes:
        pairs: list[Pair] = []
        for run in runs:
            for chunk in _run_chunks(run):
                pairs.extend(chunk)
        pairs.sort(key=_FIRST)  # stable sort: same order as the streaming merge below
        return pairs
    return heapq.merge(*(_read_run(r) for r in runs), key=_FIRST)


def run_reduce_task(task: ReduceTask) -> TaskOutput:
    """Run one attempt of a reduce task and commit its output file."""
    start = time.perf_counter()
    name = f"reduce-{task.partition:05d}"
    attempt = claim_attempt(task.work_dir, name)
    reduce = task.job.reduce
    rows: Rows = []
    values_in = 0
    for key, group in groupby(
        _sorted_pairs(task.runs, task.config.reduce_memory_bytes), key=_FIRST
    ):
        values = list(map(_SECOND, group))
        values_in += len(values)
        rows.append((key, reduce(key, values)))
    keys = len(rows)
    _inject(task.config, "reduce", task.partition, attempt)
    if task.job.finalize is not None:
        rows = task.job.finalize(rows)
    file_name = f"part-{task.partition:05d}{suffix(task.config.output_format)}"
    final = os.path.join(task.output_dir, file_name)
    tmp = os.path.join(task.output_dir, f".{file_name}.attempt-{attempt}")
    with open(tmp, "w", encoding="utf-8") as f:
        rows_out = write_rows(f, rows, task.config.output_format)
    bytes_out = os.path.getsize(tmp)
    duplicate = False
    try:
        os.link(tmp, final)  # atomic and never overwrites: the first committed attempt wins
    except FileExistsError:
        duplicate = True
    os.unlink(tmp)
    return TaskOutput(
        phase="reduce",
        task_id=task.partition,
        attempt=attempt,
        duplicate=duplicate,
        seconds=time.perf_counter() - start,
        worker=worker_name(),
        counters={
            "runs": len(task.runs),
            "shuffle_bytes": sum(os.path.getsize(r) for r in task.runs),
            "values_in": values_in,
            "keys": keys,
            "rows_out": rows_out,
            "bytes_out": bytes_out,
        },
        output_file=final,
        rows=rows if task.job.merge is not None else None,
    )
