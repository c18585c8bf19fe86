"""The driver: split the input, run the map phase, shuffle, run the reduce phase, write the report.

`run_job` is the one entry point. It retries failed task attempts (up to
`JobConfig.max_attempts`), accepts the first committed completion of each task and ignores
duplicates, checks that every input record is accounted for, and writes
`OUTPUT/report.json` (also on failure) and `OUTPUT/_SUCCESS`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tqdm import tqdm

from mapreduce.executors import Executor, SequentialExecutor, make_executor
from mapreduce.job import Job, JobConfig, Pair, Partitioner, Rows
from mapreduce.output import read_rows, suffix, write_rows
from mapreduce.partitioning.partitioners import hash_partitioner, partitioner_name
from mapreduce.splits import Split, auto_split_bytes, expand_inputs, make_splits
from mapreduce.tasks import MapTask, ReduceTask, TaskOutput, run_map_task, run_reduce_task

_OUTPUT_PREFIXES = ("part-", ".part-", "result.", "report.json", "_SUCCESS")


class JobFailedError(RuntimeError):
    """A task failed `max_attempts` times, or too many records were bad; `report` says which."""

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


@dataclass
class JobResult:
    """Where the output is and what happened. `rows` is the merged result of jobs with a `merge`."""

    output_dir: str
    files: list[str]
    report: dict[str, Any]
    rows: Rows | None = None

    def records(self) -> Iterator[Pair]:
        """The job's result rows: the merged rows, else every part file in partition order."""
        if self.rows is not None:
            yield from self.rows
            return
        for path in self.files:
            yield from read_rows(path)


def load_stats(loads: Sequence[float]) -> dict[str, float]:
    """max/mean and coefficient of variation (population std / mean) of per-partition loads."""
    mean = statistics.fmean(loads) if loads else 0.0
    if mean == 0:
        return {"max_over_mean": 0.0, "cv": 0.0}
    return {"max_over_mean": max(loads) / mean, "cv": statistics.pstdev(loads) / mean}


class _Phase:
    """Runs one phase's tasks to completion with retries; collects outputs and failures."""

    def __init__(self, executor: Executor, config: JobConfig, bar: tqdm, report: dict[str, Any]):
        self.executor = executor
        self.config = config
        self.bar = bar
        self.report = report

    def run(
        self, phase: str, fn: Callable[[Any], TaskOutput], tasks: Sequence[Any]
    ) -> list[TaskOutput]:
        ident = (lambda t: t.task_id) if phase == "map" else (lambda t: t.partition)
        submitted = {ident(t): 1 for t in tasks}
        done: dict[int, TaskOutput] = {}
        for task in tasks:
            self.executor.submit(fn, task)
        outstanding = len(tasks)
        while outstanding:
            task, ok, value = self.executor.next_completed()
            outstanding -= 1
            task_id = ident(task)
            if ok:
                if value.duplicate:  # another attempt committed first; its output stands
                    self.report["duplicates_ignored"] += 1
                done[task_id] = value
                self.bar.update()
                continue
            failure = {
                "phase": phase,
                "task": task_id,
                "submission": submitted[task_id],
                "error": repr(value),
            }
            self.report["failures"].append(failure)
            if submitted[task_id] >= self.config.max_attempts:
                raise JobFailedError(
                    f"{phase} task {task_id} failed {submitted[task_id]} times; last error: {value!r}",
                    self.report,
                )
            submitted[task_id] += 1
            self.executor.submit(fn, task)
            outstanding += 1
        return [done[ident(t)] for t in tasks]


def _clear_output(output_dir: str) -> None:
    os.makedirs(output_dir, exist_ok=True)
    for name in os.listdir(output_dir):
        if name.startswith(_OUTPUT_PREFIXES):
            os.remove(os.path.join(output_dir, name))


def _task_row(out: TaskOutput) -> dict[str, Any]:
    return {
        "phase": out.phase,
        "task": out.task_id,
        "attempts": out.attempt,
        "duplicate": out.duplicate,
        "seconds": round(out.seconds, 4),
        "worker": out.worker,
        **out.counters,
    }


def _summarize(
    report: dict[str, Any],
    map_outputs: list[TaskOutput],
    reduce_outputs: list[TaskOutput],
    config: JobConfig,
) -> None:
    def total(outputs: list[TaskOutput], name: str) -> int:
        return sum(o.counters[name] for o in outputs)

    num_partitions = config.num_partitions
    part_records = [sum(o.partition_records[r] for o in map_outputs) for r in range(num_partitions)]
    part_bytes = [sum(o.partition_bytes[r] for o in map_outputs) for r in range(num_partitions)]
    bad = [b for o in map_outputs for b in o.bad_records]
    records_in, processed, skipped = (
        total(map_outputs, n) for n in ("records_in", "records_processed", "records_skipped")
    )
    report["counters"] = {
        "map": {
            n: total(map_outputs, n)
            for n in (
                "records_in",
                "records_processed",
                "records_skipped",
                "bytes_in",
                "map_output_records",
                "spills",
            )
        },
        "shuffle": {"records": sum(part_records), "bytes": sum(part_bytes)},
        "reduce": {
            n: total(reduce_outputs, n) for n in ("values_in", "keys", "rows_out", "bytes_out")
        },
    }
    report["reconciliation"] = {
        "records_in": records_in,
        "records_processed": processed,
        "records_skipped": skipped,
        "ok": records_in == processed + skipped,
    }
    report["bad_records"] = {"count": skipped, "listed": bad, "not_listed": skipped - len(bad)}
    reduce_seconds = [o.seconds for o in reduce_outputs]
    report["partitions"] = [
        {
            "partition": r,
            "shuffle_records": part_records[r],
            "shuffle_bytes": part_bytes[r],
            "keys": reduce_outputs[r].counters["keys"],
            "reduce_seconds": round(reduce_seconds[r], 4),
        }
        for r in range(num_partitions)
    ]
    report["partition_balance"] = {
        "records": load_stats(part_records),
        "reduce_seconds": load_stats(reduce_seconds),
    }
    report["shuffle_matrix"] = [o.partition_records for o in map_outputs]
    report["tasks"] = [_task_row(o) for o in map_outputs + reduce_outputs]


def check_output_outside_inputs(
    output_dir: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]]
) -> None:
    """Refuse an output directory that is, holds or lies inside an input: the job would clear or
    read its own output. Raises `ValueError` naming both."""
    out = os.path.realpath(output_dir)
    for item in inputs:
        path = os.path.realpath(item)
        if os.path.commonpath([out, path]) in (out, path):
            raise ValueError(
                f"output directory {os.fspath(output_dir)!r} overlaps input {os.fspath(item)!r}; "
                "choose an output outside the inputs"
            )


def _check_bad_records(
    map_outputs: list[TaskOutput], config: JobConfig, report: dict[str, Any]
) -> None:
    """Fail the job when more input records were skipped than `max_bad_records` or
    `max_bad_fraction` allow; the message names the first bad record."""
    records = sum(o.counters["records_in"] for o in map_outputs)
    skipped = sum(o.counters["records_skipped"] for o in map_outputs)
    limits = []
    if config.max_bad_records is not None and skipped > config.max_bad_records:
        limits.append(f"max_bad_records={config.max_bad_records}")
    if config.max_bad_fraction is not None and skipped > config.max_bad_fraction * records:
        limits.append(f"max_bad_fraction={config.max_bad_fraction:g}")
    if not limits:
        return
    listed = [b for o in map_outputs for b in o.bad_records]
    report["bad_records"] = {"count": skipped, "listed": listed}
    first = listed[0] if listed else None
    message = (
        f"{skipped} of {records} input records were bad (skipped), more than {' and '.join(limits)}"
    )
    if first is not None:
        message += f"; first: {first['path']}@{first['offset']}: {first['reason']}"
        if first["reason"].startswith("UnicodeDecodeError"):
            message += (
                f"; the input may not be {config.encoding}: name its encoding "
                "(--encoding, JobConfig.encoding)"
            )
    raise JobFailedError(message, report)


def _new_report(
    job: Job,
    paths: list[str],
    splits: list[Split],
    split_bytes: int,
    config: JobConfig,
    partitioner: Partitioner,
) -> dict[str, Any]:
    return {
        "job": job.name,
        "status": "running",
        "inputs": paths,
        "input_bytes": sum(os.path.getsize(p) for p in paths),
        "splits": len(splits),
        "split_bytes": split_bytes,
        "num_partitions": config.num_partitions,
        "partitioner": partitioner_name(partitioner),
        "config": {k: v for k, v in asdict(config).items() if k != "faults"},
        "failures": [],
        "duplicates_ignored": 0,
        "work_dir": None,
    }


def _run_phases(
    job: Job,
    splits: list[Split],
    executor: str | Executor,
    workers: int | None,
    scheduler: str | None,
    config: JobConfig,
    partitioner: Partitioner,
    work: str,
    output_dir: str,
    report: dict[str, Any],
    progress: bool,
) -> tuple[list[TaskOutput], list[TaskOutput]]:
    """The map phase, the bad-record check and the reduce phase: (map outputs, reduce outputs)."""
    with contextlib.ExitStack() as stack:
        if isinstance(executor, str):
            ex = stack.enter_context(make_executor(executor, workers, scheduler))
        else:
            ex = executor
        report.update(engine=ex.name, workers=ex.workers)
        bar = stack.enter_context(
            tqdm(
                total=len(splits) + config.num_partitions,
                desc=f"{job.name} [{ex.name}]",
                unit="task",
                disable=not progress,
            )
        )
        phase = _Phase(ex, config, bar, report)
        t0 = time.perf_counter()
        map_tasks = [MapTask(i, s, job, partitioner, config, work) for i, s in enumerate(splits)]
        map_outputs = phase.run("map", run_map_task, map_tasks)
        t1 = time.perf_counter()
        _check_bad_records(map_outputs, config, report)
        reduce_tasks = [
            ReduceTask(
                r,
                tuple(run for o in map_outputs for run in o.runs[r]),
                job,
                config,
                work,
                output_dir,
            )
            for r in range(config.num_partitions)
        ]
        reduce_outputs = phase.run("reduce", run_reduce_task, reduce_tasks)
        report["phase_seconds"] = {
            "map": round(t1 - t0, 4),
            "reduce": round(time.perf_counter() - t1, 4),
        }
    return map_outputs, reduce_outputs


def _finish(
    job: Job,
    config: JobConfig,
    output_dir: str,
    report: dict[str, Any],
    map_outputs: list[TaskOutput],
    reduce_outputs: list[TaskOutput],
) -> JobResult:
    """Summarize and reconcile the counters, write a merged `result.*`, mark the report done."""
    _summarize(report, map_outputs, reduce_outputs, config)
    if not report["reconciliation"]["ok"]:
        raise JobFailedError("record counters do not reconcile", report)
    files = [o.output_file for o in reduce_outputs if o.output_file]
    rows = None
    if job.merge is not None:
        rows = job.merge([o.rows or [] for o in reduce_outputs])
        result_path = os.path.join(output_dir, f"result{suffix(config.output_format)}")
        with open(result_path + ".tmp", "w", encoding="utf-8") as f:
            write_rows(f, rows, config.output_format)
        os.replace(result_path + ".tmp", result_path)
    report["status"] = "succeeded"
    report["output"] = {"dir": output_dir, "files": [os.path.basename(f) for f in files]}
    return JobResult(output_dir, files, report, rows)


def _write_report(output_dir: str, report: dict[str, Any]) -> None:
    with open(os.path.join(output_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, default=str)
    if report["status"] == "succeeded":
        open(os.path.join(output_dir, "_SUCCESS"), "w").close()


def run_job(
    job: Job,
    inputs: Sequence[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    *,
    executor: str | Executor = "sequential",
    workers: int | None = None,
    scheduler: str | None = None,
    config: JobConfig | None = None,
    partitioner: Partitioner = hash_partitioner,
    work_dir: str | None = None,
    keep_work: bool = False,
    progress: bool = False,
) -> JobResult:
    """Run `job` over `inputs` (files or directories) into `output_dir`.

    `executor` is an `Executor` (left open, reusable) or an engine name ("sequential",
    "processes", "dask") for one built here with `workers` / `scheduler` and closed afterwards.
    `output_dir` must not overlap the inputs; a previous job output in it is replaced.
    Intermediate files go to a fresh directory under `work_dir` (default: the system temp dir;
    it must be shared by all workers), removed at the end, failed or not, unless `keep_work`.
    Output: `part-RRRRR.tsv|.jsonl` per reduce partition (keys sorted), `result.*` for jobs with a
    `merge`, `report.json` (also on failure) and `_SUCCESS`.
    """
    config = config or JobConfig()
    output_dir = os.path.abspath(os.fspath(output_dir))
    paths = [os.path.abspath(p) for p in expand_inputs(inputs)]
    check_output_outside_inputs(output_dir, inputs)
    split_bytes = config.split_bytes or auto_split_bytes(sum(os.path.getsize(p) for p in paths))
    splits = make_splits(paths, split_bytes)
    if config.faults.kill and (
        executor == "sequential" or isinstance(executor, SequentialExecutor)
    ):
        raise ValueError(
            "FaultPlan.kill would kill the driver itself; use the processes or dask engine"
        )
    _clear_output(output_dir)
    report = _new_report(job, paths, splits, split_bytes, config, partitioner)
    start = time.perf_counter()
    work = tempfile.mkdtemp(prefix=f"mapreduce-{job.name}-", dir=work_dir)
    try:
        report["work_dir"] = work if keep_work else None
        os.makedirs(os.path.join(work, "attempts"))
        map_outputs, reduce_outputs = _run_phases(
            job,
            splits,
            executor,
            workers,
            scheduler,
            config,
            partitioner,
            work,
            output_dir,
            report,
            progress,
        )
        result = _finish(job, config, output_dir, report, map_outputs, reduce_outputs)
        report["wall_seconds"] = round(time.perf_counter() - start, 4)
        return result
    except BaseException as exc:
        report["status"] = "failed"
        report["error"] = repr(exc)
        if not isinstance(executor, str):
            executor.cancel_all()  # the caller's executor stays open: leave it with no tasks
        raise
    finally:
        try:
            _write_report(output_dir, report)
        finally:
            if not keep_work:
                shutil.rmtree(work, ignore_errors=True)
