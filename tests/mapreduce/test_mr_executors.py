"""Sequential, process-pool and Dask executors give byte-identical output, and survive crashes
and SIGKILLed workers mid-job. One 2-worker pool and one 2-worker LocalCluster for the module."""

import contextlib
import signal
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mapreduce.engine import JobFailedError, run_job
from mapreduce.executors import DaskExecutor, ProcessExecutor, SequentialExecutor, make_executor
from mapreduce.job import FaultPlan, JobConfig
from mapreduce.word_stats import JOBS, get_job


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail the test instead of hanging if a cluster misbehaves."""

    def expire(signum, frame):
        raise TimeoutError(f"exceeded {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def pool():
    with ProcessExecutor(2) as executor:
        yield executor


@pytest.fixture(scope="module")
def dask_executor():
    with deadline(120):
        executor = DaskExecutor(2)
    yield executor
    with deadline(60):
        executor.close()


def output_bytes(result) -> list[bytes]:
    return [Path(f).read_bytes() for f in result.files]


def write_lines(directory: str, lines: list[str]) -> str:
    path = Path(directory) / "input.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


words = st.text(alphabet=st.sampled_from(list("abcXYZ éÉßİ—,.\t_1")), max_size=30)


@settings(max_examples=5, deadline=None)
@given(
    lines=st.lists(words, max_size=25),
    num_partitions=st.integers(1, 5),
    split_bytes=st.integers(20, 300),
)
def test_three_executors_agree_on_every_job(
    pool, dask_executor, lines, num_partitions, split_bytes
):
    config = JobConfig(num_partitions=num_partitions, split_bytes=split_bytes, block_bytes=64)
    with tempfile.TemporaryDirectory() as d, deadline(120):
        path = write_lines(d, lines)
        for name in JOBS:
            outputs = []
            for executor in (SequentialExecutor(), pool, dask_executor):
                result = run_job(
                    get_job(name, k=3),
                    [path],
                    f"{d}/{name}-{executor.name}",
                    executor=executor,
                    config=config,
                )
                assert result.report["reconciliation"]["ok"]
                outputs.append((output_bytes(result), result.rows))
            assert outputs[0] == outputs[1] == outputs[2], name


LINES = [f"line {i} alpha beta gamma {'delta ' * (i % 4)}Épsilon" for i in range(60)]
CONFIG = JobConfig(num_partitions=3, split_bytes=400, block_bytes=100)


def attempts_of(result) -> dict[tuple[str, int], int]:
    return {(t["phase"], t["task"]): t["attempts"] for t in result.report["tasks"]}


def test_process_pool_survives_sigkill_and_crashes(pool, tmp_path):
    path = write_lines(str(tmp_path), LINES)
    clean = run_job(get_job("word_count"), [path], tmp_path / "clean", config=CONFIG)
    faults = FaultPlan(kill=frozenset({("map", 1), ("reduce", 0)}), crash=frozenset({("map", 2)}))
    replaced = pool.replaced
    with deadline(60):
        result = run_job(
            get_job("word_count"),
            [path],
            tmp_path / "faulty",
            executor=pool,
            config=replace(CONFIG, faults=faults),
        )
    assert output_bytes(result) == output_bytes(clean)
    attempts = attempts_of(result)
    assert attempts.pop(("map", 1)) == attempts.pop(("reduce", 0)) == attempts.pop(("map", 2)) == 2
    assert set(attempts.values()) == {1}
    errors = sorted(f["error"] for f in result.report["failures"])
    assert sum("WorkerDied" in e and "signal 9" in e for e in errors) == 2
    assert sum("InjectedFault" in e for e in errors) == 1
    assert pool.replaced == replaced + 2


def test_dask_survives_sigkill_and_crashes(dask_executor, tmp_path):
    path = write_lines(str(tmp_path), LINES)
    clean = run_job(get_job("topk", k=4), [path], tmp_path / "clean", config=CONFIG)
    faults = FaultPlan(kill=frozenset({("map", 0)}), crash=frozenset({("reduce", 1)}))
    with deadline(120):
        result = run_job(
            get_job("topk", k=4),
            [path],
            tmp_path / "faulty",
            executor=dask_executor,
            config=replace(CONFIG, faults=faults),
        )
    assert output_bytes(result) == output_bytes(clean) and result.rows == clean.rows
    attempts = attempts_of(result)
    assert attempts.pop(("map", 0)) == 2  # dask re-ran the killed worker's task itself
    assert attempts.pop(("reduce", 1)) == 2
    assert set(attempts.values()) == {1}
    assert [f["task"] for f in result.report["failures"]] == [1]


@pytest.mark.parametrize("fixture", ["pool", "dask_executor"])
def test_a_failed_job_leaves_the_executor_clean(request, fixture, tmp_path):
    executor = request.getfixturevalue(fixture)
    path = write_lines(str(tmp_path), LINES)
    doomed = replace(CONFIG, max_attempts=1, faults=FaultPlan(crash=frozenset({("map", 0)})))
    with deadline(60):
        with pytest.raises(JobFailedError, match="map task 0 failed 1 times"):
            run_job(
                get_job("word_count"), [path], tmp_path / "doomed", executor=executor, config=doomed
            )
        result = run_job(
            get_job("word_count"), [path], tmp_path / "next", executor=executor, config=CONFIG
        )
    clean = run_job(get_job("word_count"), [path], tmp_path / "clean", config=CONFIG)
    assert output_bytes(result) == output_bytes(clean)
    assert all(t["attempts"] == 1 for t in result.report["tasks"])


def test_make_executor_names():
    assert make_executor("sequential").name == "sequential"
    with make_executor("processes", 1) as executor:
        assert executor.name == "processes" and executor.workers == 1
    with pytest.raises(ValueError, match="engine='spark' is not allowed"):
        make_executor("spark")
