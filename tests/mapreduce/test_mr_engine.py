"""Engine semantics on the sequential executor: results, combiner, sorting, spills, bad records,
counters, injected crashes, duplicate completions, commit and the report."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from mapreduce.engine import JobFailedError, run_job
from mapreduce.executors import SequentialExecutor, WorkerDied
from mapreduce.job import FaultPlan, Job, JobConfig
from mapreduce.output import read_rows
from mapreduce.partitioning.partitioners import hash_partitioner
from mapreduce.tasks import MapTask, ReduceTask, run_map_task, run_reduce_task
from mapreduce.tokenizer import tokenize
from mapreduce.word_stats import JOBS, get_job, get_words_stats_in_file, sum_values

ROOT = Path(__file__).resolve().parents[2]
TEXT = (
    "The quick brown fox jumps over the lazy dog.\n"
    "Über-große Füchse: THE fox, the Fox!\n"
    "\n"
    "naïve café déjà vu — the end\r\n"
    "numbers 42 and_underscores 42\n"
    "last line without newline the"
)


def write(path: Path, data: str | bytes) -> str:
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return str(path)


def output_bytes(result) -> list[bytes]:
    return [Path(f).read_bytes() for f in result.files]


@pytest.fixture
def text_file(tmp_path):
    return write(tmp_path / "input.txt", TEXT)


SMALL = JobConfig(num_partitions=3, split_bytes=40, block_bytes=16)


def test_word_stats_match_a_plain_counter(text_file, tmp_path):
    words = Counter(tokenize(TEXT))
    lengths = sum(len(w) * c for w, c in words.items())
    got = {name: get_words_stats_in_file([text_file], name, num_partitions=3, k=3) for name in JOBS}
    assert got["word_count"] == dict(sorted(words.items()))
    assert got["sum_of_word_lengths"] == lengths
    assert got["average_word_length"] == lengths / sum(words.values())
    assert got["topk"] == sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    assert got["freq_count"] == dict(sorted(Counter(words.values()).items()))


def test_empty_input_gives_empty_results(tmp_path):
    path = write(tmp_path / "empty.txt", "")
    assert get_words_stats_in_file([path], "word_count") == {}
    assert get_words_stats_in_file([path], "average_word_length") == 0.0


@pytest.mark.parametrize("name", list(JOBS))
def test_combiner_spills_and_streaming_merge_do_not_change_output(text_file, tmp_path, name):
    job = get_job(name, k=4)
    reference = run_job(job, [text_file], tmp_path / "ref", config=SMALL)
    variants = {
        "no_combiner": JobConfig(
            num_partitions=3, split_bytes=40, block_bytes=16, use_combiner=False
        ),
        "tiny_spills": JobConfig(num_partitions=3, split_bytes=40, block_bytes=16, spill_records=2),
        "streaming_merge": JobConfig(
            num_partitions=3, split_bytes=40, block_bytes=16, reduce_memory_bytes=1
        ),
    }
    for label, config in variants.items():
        result = run_job(job, [text_file], tmp_path / label, config=config)
        assert output_bytes(result) == output_bytes(reference), label
        assert list(result.records()) == list(reference.records()), label
    spilled = run_job(job, [text_file], tmp_path / "spill_check", config=variants["tiny_spills"])
    assert (
        spilled.report["counters"]["map"]["spills"] > reference.report["counters"]["map"]["spills"]
    )
    no_combiner = run_job(job, [text_file], tmp_path / "nc_check", config=variants["no_combiner"])
    assert (
        no_combiner.report["counters"]["shuffle"]["records"]
        > reference.report["counters"]["shuffle"]["records"]
    )


def repeated_words_map(line):
    return [(word, 1) for word in tokenize(line)]


@pytest.mark.parametrize("spill_records", [2, 1_000_000])
def test_general_combiner_sums_every_value_of_a_repeated_key(tmp_path, spill_records):
    """A job without an in-mapper combiner goes through the general map-side combiner: each
    map task buffers several values per key and combines them before the shuffle."""
    text = "the cat and the hat\nthe the end\nand a cat\n" * 5
    path = write(tmp_path / "repeated.txt", text)
    job = Job("repeated", repeated_words_map, sum_values, sum_values)
    config = JobConfig(num_partitions=2, split_bytes=60, spill_records=spill_records)
    result = run_job(job, [path], tmp_path / "out", config=config)
    assert dict(result.records()) == Counter(tokenize(text))
    counters = result.report["counters"]
    assert counters["shuffle"]["records"] < counters["map"]["map_output_records"]


PINNED_PARTITIONS = {  # zlib.crc32(word.encode("utf-8")) % 4, fixed forever
    "apple": 0,
    "banana": 3,
    "date": 2,
    "elderberry": 1,
    "fig": 1,
    "grape": 1,
    "honeydew": 3,
    "kiwi": 0,
    "nectarine": 3,
    "orange": 0,
    "papaya": 1,
    "raspberry": 1,
}
PINNED_INT_PARTITIONS = {1: 3, 2: 1, 3: 3, 4: 0, 5: 2, 6: 0, 7: 2, 8: 3, 9: 1, 10: 1}


def word_length_map(line):
    return [(len(word), 1) for word in tokenize(line)]


@pytest.mark.parametrize("use_combiner", [True, False])
def test_engine_sends_known_keys_to_pinned_partitions(tmp_path, use_combiner):
    text = " ".join(PINNED_PARTITIONS) + "\n" + " ".join("x" * n for n in PINNED_INT_PARTITIONS)
    path = write(tmp_path / "keys.txt", text)
    config = JobConfig(num_partitions=4, use_combiner=use_combiner, output_format="json")
    words = run_job(get_job("word_count"), [path], tmp_path / "words", config=config)
    where = {k: r for r, f in enumerate(words.files) for k, _ in read_rows(f)}
    assert {k: where[k] for k in PINNED_PARTITIONS} == PINNED_PARTITIONS
    lengths = Job("lengths", word_length_map, sum_values, sum_values)
    by_length = run_job(lengths, [path], tmp_path / "lengths", config=config)
    where = {k: r for r, f in enumerate(by_length.files) for k, _ in read_rows(f)}
    assert where == PINNED_INT_PARTITIONS


RUN_IN_A_FRESH_INTERPRETER = """
import sys
from mapreduce.engine import run_job
from mapreduce.job import Job, JobConfig
from mapreduce.tokenizer import tokenize
from mapreduce.word_stats import get_job, sum_values

def initial_and_length(line):  # tuple keys: partitioned by stable_hash, not the str fast path
    return [((word[0], len(word)), 1) for word in tokenize(line)]

config = JobConfig(num_partitions=4)
source, out = sys.argv[1:]
run_job(get_job("word_count"), [source], out + "/words", config=config)
run_job(Job("pairs", initial_and_length, sum_values), [source], out + "/pairs", config=config)
"""


def test_same_input_gives_the_same_partition_files_under_any_hash_seed(text_file, tmp_path):
    outputs = []
    for seed in ("1", "2"):
        out = tmp_path / f"seed{seed}"
        subprocess.run(
            [sys.executable, "-c", RUN_IN_A_FRESH_INTERPRETER, text_file, str(out)],
            env={**os.environ, "PYTHONHASHSEED": seed},
            cwd=ROOT,
            check=True,
            timeout=60,
        )
        outputs.append(
            {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("*/part-*"))}
        )
    assert len(outputs[0]) == 8 and all(outputs[0].values())
    assert outputs[0] == outputs[1]


SEEN_KEYS: list[str] = []


def recording_reduce(key, values):
    SEEN_KEYS.append(key)
    return sum(values)


def test_reduce_sees_keys_sorted_within_each_partition(text_file, tmp_path):
    SEEN_KEYS.clear()
    job = Job("recording", get_job("word_count").map, recording_reduce, sum_values)
    config = JobConfig(num_partitions=2, split_bytes=70, spill_records=3)
    result = run_job(
        job, [text_file], tmp_path / "out", config=config, work_dir=str(tmp_path), keep_work=True
    )
    kept = sorted(os.listdir(result.report["work_dir"]))
    assert kept == ["attempts"] + [f"map-{i:05d}" for i in range(result.report["splits"])]
    assert result.report["splits"] > 2
    assert (
        max(t["spills"] for t in result.report["tasks"] if t["phase"] == "map") >= 2
    )  # several runs to merge
    per_partition = [
        [line.split("\t")[0] for line in Path(f).read_text().splitlines()] for f in result.files
    ]
    assert all(keys == sorted(keys) and keys for keys in per_partition)
    assert (
        SEEN_KEYS == per_partition[0] + per_partition[1]
    )  # partition 0 reduced first, in key order


def test_bad_utf8_lines_are_skipped_counted_and_listed(tmp_path):
    data = (
        b"good words here\n\xff\xfe broken line\nmore good words\nbad \xc3\x28 again\nfinal good\n"
    )
    path = write(tmp_path / "bad.txt", data)
    for use_combiner in (True, False):
        config = JobConfig(num_partitions=2, use_combiner=use_combiner, max_bad_fraction=None)
        result = run_job(
            get_job("word_count"), [path], tmp_path / f"out{use_combiner}", config=config
        )
        rec = result.report["reconciliation"]
        assert rec == {"records_in": 5, "records_processed": 3, "records_skipped": 2, "ok": True}
        listed = result.report["bad_records"]["listed"]
        assert [b["offset"] for b in listed] == [data.index(b"\xff"), data.index(b"bad")]
        assert all(b["reason"].startswith("UnicodeDecodeError") for b in listed)
        assert dict(result.records()) == {"good": 3, "words": 2, "here": 1, "more": 1, "final": 1}


def test_malformed_json_lines_and_failing_map_records_are_skipped(tmp_path):
    lines = [
        '{"author_id": "a", "user_id": "x", "engagement": "like"}',
        "{not json",
        "",
        '{"author_id": "b"}',
    ]
    path = write(tmp_path / "e.jsonl", "\n".join(lines) + "\n")
    from mapreduce.partitioning.challenge_01_user_influence import INFLUENCE_JOB

    config = JobConfig(
        num_partitions=2, bad_records_listed=1, record_attempts=3, max_bad_fraction=None
    )
    result = run_job(INFLUENCE_JOB, [path], tmp_path / "out", config=config)
    rec = result.report["reconciliation"]
    assert rec == {"records_in": 3, "records_processed": 1, "records_skipped": 2, "ok": True}
    bad = result.report["bad_records"]
    assert (
        bad["count"] == 2
        and bad["not_listed"] == 1
        and "JSONDecodeError" in bad["listed"][0]["reason"]
    )
    assert dict(result.records()) == {"a": {"score": 1.0, "engagement": 1, "reach": 1}}
    with pytest.raises(JobFailedError, match="max_bad_records"):
        run_job(INFLUENCE_JOB, [path], tmp_path / "strict", config=JobConfig(max_bad_records=1))
    report = json.loads((tmp_path / "strict" / "report.json").read_text())
    assert report["status"] == "failed" and not (tmp_path / "strict" / "_SUCCESS").exists()


FLAKY_CALLS: Counter[str] = Counter()


def flaky_map(line):
    """Fails the first call on each line containing 'flaky', always fails on 'poison'."""
    FLAKY_CALLS[line] += 1
    if "poison" in line or ("flaky" in line and FLAKY_CALLS[line] == 1):
        raise RuntimeError(f"cannot map {line!r}")
    return [(w, 1) for w in tokenize(line)]


def test_record_attempts_retry_flaky_records_and_skip_poison(tmp_path):
    FLAKY_CALLS.clear()
    path = write(tmp_path / "f.txt", "a flaky b\npoison pill\nc\n")
    job = Job("flaky", flaky_map, sum_values, sum_values)
    result = run_job(
        job, [path], tmp_path / "out", config=JobConfig(record_attempts=2, max_bad_fraction=0.5)
    )
    assert dict(result.records()) == {"a": 1, "b": 1, "c": 1, "flaky": 1}
    assert FLAKY_CALLS["poison pill"] == 2
    assert result.report["bad_records"]["listed"][0]["reason"].startswith(
        "map failed 2x: RuntimeError"
    )


def test_injected_crashes_are_retried_and_output_matches_clean_run(text_file, tmp_path):
    job = get_job("word_count")
    clean = run_job(job, [text_file], tmp_path / "clean", config=SMALL)
    faults = FaultPlan(crash=frozenset({("map", 1), ("reduce", 2)}))
    config = JobConfig(num_partitions=3, split_bytes=40, block_bytes=16, faults=faults)
    result = run_job(job, [text_file], tmp_path / "faulty", config=config)
    assert output_bytes(result) == output_bytes(clean)
    attempts = {(t["phase"], t["task"]): t["attempts"] for t in result.report["tasks"]}
    assert attempts.pop(("map", 1)) == 2 and attempts.pop(("reduce", 2)) == 2
    assert set(attempts.values()) == {1}
    assert sorted((f["phase"], f["task"]) for f in result.report["failures"]) == [
        ("map", 1),
        ("reduce", 2),
    ]
    assert "InjectedFault" in result.report["failures"][0]["error"]


def test_a_task_failing_every_attempt_fails_the_job(text_file, tmp_path):
    faults = FaultPlan(crash=frozenset({("map", 0)}), attempts=3)
    config = JobConfig(split_bytes=40, max_attempts=3, faults=faults)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(JobFailedError, match="map task 0 failed 3 times"):
        run_job(
            get_job("word_count"), [text_file], tmp_path / "out", config=config, work_dir=str(work)
        )
    assert list(work.iterdir()) == []  # the failed job's intermediate files are gone
    with pytest.raises(ValueError, match="kill the driver"):
        run_job(
            get_job("word_count"),
            [text_file],
            tmp_path / "k",
            config=JobConfig(faults=FaultPlan(kill=frozenset({("map", 0)}))),
        )


class LostResultExecutor(SequentialExecutor):
    """Reports the first completion of every task as lost, like a worker that committed its
    output and then vanished before answering, so the engine runs the task again."""

    def __init__(self):
        super().__init__()
        self.lost = set()

    def next_completed(self):
        task, ok, value = super().next_completed()
        if ok and (value.phase, value.task_id) not in self.lost:
            self.lost.add((value.phase, value.task_id))
            return task, False, WorkerDied("result lost after commit")
        return task, ok, value


def test_duplicate_completions_are_ignored(text_file, tmp_path):
    job = get_job("topk", k=5)
    clean = run_job(job, [text_file], tmp_path / "clean", config=SMALL)
    result = run_job(
        job, [text_file], tmp_path / "dup", executor=LostResultExecutor(), config=SMALL
    )
    assert output_bytes(result) == output_bytes(clean)
    assert result.rows == clean.rows
    tasks = clean.report["splits"] + SMALL.num_partitions
    assert result.report["duplicates_ignored"] == tasks == len(result.report["failures"])
    assert all(t["attempts"] == 2 and t["duplicate"] for t in result.report["tasks"])


def test_commit_keeps_the_first_attempt(text_file, tmp_path):
    from mapreduce.splits import make_splits

    work = tmp_path / "work"
    (work / "attempts").mkdir(parents=True)
    out = tmp_path / "out"
    out.mkdir()
    job = get_job("word_count")
    task = MapTask(0, make_splits([text_file], 1 << 20)[0], job, hash_partitioner, SMALL, str(work))
    first, second = run_map_task(task), run_map_task(task)
    assert (first.attempt, first.duplicate, second.attempt, second.duplicate) == (1, False, 2, True)
    assert sorted(os.listdir(work)) == ["attempts", "map-00000"]
    runs = tuple(r for part in first.runs[:1] for r in part)
    reduce_task = ReduceTask(0, runs, job, SMALL, str(work), str(out))
    a, b = run_reduce_task(reduce_task), run_reduce_task(reduce_task)
    assert (a.duplicate, b.duplicate) == (False, True)
    assert os.listdir(out) == ["part-00000.tsv"]


def bad_partitioner(key, num_partitions):
    return num_partitions


def test_out_of_range_partitioner_fails_clearly(text_file, tmp_path):
    with pytest.raises(JobFailedError, match=r"must be in \[0, 4\)"):
        run_job(
            get_job("word_count"),
            [text_file],
            tmp_path / "o",
            partitioner=bad_partitioner,
            config=JobConfig(max_attempts=1),
        )


def test_report_json_and_output_formats(text_file, tmp_path):
    result = run_job(get_job("freq_count"), [text_file], tmp_path / "tsv", config=SMALL)
    report = json.loads((tmp_path / "tsv" / "report.json").read_text())
    assert report["status"] == "succeeded" and (tmp_path / "tsv" / "_SUCCESS").exists()
    assert report["reconciliation"]["ok"] and report["counters"]["map"]["records_in"] == 6
    assert len(report["partitions"]) == 3 and len(report["shuffle_matrix"]) == report["splits"]
    assert {"seconds", "attempts", "worker"} <= set(report["tasks"][0])
    assert (tmp_path / "tsv" / "result.tsv").read_text().splitlines()[0].split("\t") == [
        "1",
        str(result.rows[0][1]),
    ]
    as_json = run_job(
        get_job("freq_count"),
        [text_file],
        tmp_path / "json",
        config=JobConfig(num_partitions=3, output_format="json"),
    )
    assert as_json.rows == result.rows
    assert [
        tuple(json.loads(line).values())
        for line in (tmp_path / "json" / "result.jsonl").read_text().splitlines()
    ] == [tuple(r) for r in result.rows]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_partitions": 0}, "num_partitions"),
        ({"split_bytes": -1}, "split_bytes"),
        ({"output_format": "csv"}, "output_format"),
        ({"max_bad_records": -2}, "max_bad_records"),
        ({"max_bad_fraction": 1.5}, "max_bad_fraction"),
        ({"encoding": "utf-16"}, "encoding"),
        ({"encoding": "no-such-codec"}, "encoding"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        JobConfig(**kwargs)


def test_job_validation():
    with pytest.raises(ValueError, match="input_format"):
        Job("x", flaky_map, sum_values, input_format="parquet")
    with pytest.raises(ValueError, match="unknown job"):
        get_job("median")


@pytest.mark.parametrize("output_format", ["tsv", "json"])
def test_output_rows_round_trip_including_characters_that_need_escaping(tmp_path, output_format):
    from mapreduce.output import read_rows, suffix, write_rows

    rows = [
        ("plain", 1),
        ("tab\there", 2),
        ("new\nline", 3),
        ("back\\slash", 4),
        ("cr\r", 5),
        ("x", 2.5),
    ]
    for chunk in (rows[:1], rows):  # the all-plain fast path and the escaping path
        path = tmp_path / f"rows{len(chunk)}{suffix(output_format)}"
        with open(path, "w", encoding="utf-8") as f:
            assert write_rows(f, iter(chunk), output_format) == len(chunk)
        assert list(read_rows(path)) == chunk
