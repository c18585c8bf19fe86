"""Command lines (run, generate, analyze, challenge) and the benchmark entry on tiny inputs;
the default `python -m mapreduce.run`; every CLI's answer to bad flags."""

import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mapreduce import analyze, bench, generate, run
from mapreduce.executors import SequentialExecutor
from mapreduce.output import read_rows
from mapreduce.partitioning import challenge_01_user_influence
from mapreduce.tokenizer import tokenize

ROOT = Path(__file__).resolve().parents[2]


def counts(output_dir: Path) -> dict[str, int]:
    """Word counts read back from a job's part files (each word must appear once)."""
    rows = [row for part in sorted(output_dir.glob("part-*")) for row in read_rows(part)]
    result = dict(rows)
    assert len(result) == len(rows)
    return result


def test_run_word_count_on_the_readme_with_8_workers(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mapreduce.run",
            "word_count",
            "README.md",
            "--workers",
            "8",
            "--output",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "succeeded" in out.stdout and "on processes (workers=8)" in out.stdout
    assert counts(tmp_path) == Counter(tokenize((ROOT / "README.md").read_text(encoding="utf-8")))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["reconciliation"]["ok"] and report["counters"]["map"]["records_in"] > 0
    assert sorted(os.listdir(tmp_path)) == [
        "_SUCCESS",
        "part-00000.tsv",
        "part-00001.tsv",
        "part-00002.tsv",
        "part-00003.tsv",
        "report.json",
    ]


def run_module(module: str, *args: str, cwd: Path, timeout: float = 120):
    """`python -m module args` from `cwd`, importing this checkout, temp files under cwd."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(cwd)}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_default_run_counts_cpythons_docs_into_a_fresh_directory_each_time(tmp_path):
    first = run_module("mapreduce.run", "--workers", "8", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    second = run_module("mapreduce.run", "--workers", "8", "--no-progress", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "word_count: succeeded" in first.stdout and "16 map tasks" in first.stdout
    assert "on processes (workers=8)" in first.stdout
    outputs = [
        Path(re.search(r"^output: (\S+) ", r.stdout, re.MULTILINE).group(1))
        for r in (first, second)
    ]
    assert outputs[0] != outputs[1] and all(
        p.parent == tmp_path / "runs" / "mapreduce" and p.name.startswith("word_count-")
        for p in outputs
    )
    corpus = Path(re.search(r"^input: (\S+) ", first.stdout, re.MULTILINE).group(1))
    expected = Counter(tokenize(corpus.read_text(encoding="utf-8")))
    assert corpus.stat().st_size > 400_000 and sum(expected.values()) > 50_000
    assert counts(outputs[0]) == counts(outputs[1]) == expected
    top = "\n".join(f"{w}\t{c}" for w, c in sorted(expected.items(), key=lambda kv: -kv[1])[:3])
    assert f"the 10 most frequent words:\n{top}\n" in first.stdout


def test_help_shows_a_worked_example(tmp_path):
    out = run_module("mapreduce.run", "--help", cwd=tmp_path)
    assert (
        out.returncode == 0 and "examples:\n  python -m mapreduce.run --workers 8\n" in out.stdout
    )
    assert "--encoding" in out.stdout and "--max-bad-fraction" in out.stdout


def test_corpus_file_is_the_pydoc_topics_text(tmp_path):
    from pydoc_data.topics import topics

    from mapreduce.corpus import SPLITS, corpus_split_bytes, python_docs_corpus

    path = python_docs_corpus(str(tmp_path))
    text = Path(path).read_text(encoding="utf-8")
    assert all(topics[name].strip() in text for name in ("if", "while", "assert"))
    assert python_docs_corpus(str(tmp_path)) == path  # written once
    assert -(-len(text.encode()) // corpus_split_bytes(path)) == SPLITS


def test_run_refuses_to_replace_a_finished_output_unless_asked(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("one two two\n")
    argv = ["word_count", str(text), "--engine", "sequential", "--no-progress"]
    assert run.main([*argv, "--output", str(tmp_path / "out")]) == 0
    before = (tmp_path / "out" / "part-00000.tsv").read_bytes()
    with pytest.raises(SystemExit) as refused:
        run.main([*argv, "--output", str(tmp_path / "out"), "--k", "3"])
    assert (
        refused.value.code == 2 and "already holds a finished job output" in capsys.readouterr().err
    )
    assert (tmp_path / "out" / "part-00000.tsv").read_bytes() == before
    assert run.main([*argv, "--output", str(tmp_path / "out"), "--overwrite"]) == 0


def test_run_reports_a_wrong_encoding_and_reads_it_with_encoding(tmp_path, capsys):
    text = "Café déjà vu\nnaïve façade café\n"
    path = tmp_path / "latin1.txt"
    path.write_bytes(text.encode("latin-1"))
    argv = ["word_count", str(path), "--engine", "sequential", "--no-progress", "--output"]
    assert run.main([*argv, str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("job failed: 2 of 2 input records were bad") and "may not be utf-8" in err
    assert run.main([*argv, str(tmp_path / "b"), "--encoding", "latin-1"]) == 0
    assert counts(tmp_path / "b") == Counter(tokenize(text))


def test_run_cli_options(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("b a b\nc b a\n" * 20)
    argv = [
        "topk",
        str(text),
        "--engine",
        "sequential",
        "--k",
        "2",
        "--format",
        "json",
        "--shuffle-report",
        "--split-mb",
        "0.0001",
        "--crash-map-task",
        "1",
        "--output",
        str(tmp_path / "out"),
        "--no-progress",
    ]
    assert run.main(argv) == 0
    printed = capsys.readouterr().out
    assert "b\t60\na\t40\n" in printed
    assert "shuffle of topk" in printed and "map 1 (attempt 2)" in printed
    assert (tmp_path / "out" / "result.jsonl").read_text().splitlines()[
        0
    ] == '{"key":"b","value":60}'
    assert (
        run.main(
            [
                *argv[:2],
                "--engine",
                "sequential",
                "--max-attempts",
                "1",
                "--crash-map-task",
                "0",
                "--output",
                str(tmp_path / "o2"),
            ]
        )
        == 1
    )


def test_generate_analyze_and_challenge_clis(tmp_path, capsys):
    paths = generate.main(
        [
            "--out",
            str(tmp_path),
            "--users",
            "500",
            "--posts",
            "1000",
            "--activity",
            "3000",
            "--engagement",
            "3000",
        ]
    )
    assert [Path(p).name for p in paths] == ["user_activity_1.jsonl", "content_engagement_1.jsonl"]
    chart = tmp_path / "loads.png"
    results = analyze.main(
        [
            paths[0],
            "--key",
            "user_id",
            "--partitions",
            "4",
            "--chart",
            str(chart),
            "--report",
            str(tmp_path / "a.json"),
        ]
    )
    assert set(results) == {"hash", "range", "user_tier", "salted"} and chart.exists()
    assert json.loads((tmp_path / "a.json").read_text())["hash"]["loads"] == results["hash"].loads
    outcome = challenge_01_user_influence.main(
        [
            paths[1],
            "--engine",
            "sequential",
            "--partitions",
            "4",
            "--chart",
            str(tmp_path / "c.png"),
            "--report",
            str(tmp_path / "c.json"),
            "--output",
            str(tmp_path / "influence"),
        ]
    )
    printed = capsys.readouterr().out
    assert outcome["identical_results"] and "identical results across strategies: True" in printed
    assert (tmp_path / "c.png").exists() and json.loads((tmp_path / "c.json").read_text())[
        "authors"
    ] == outcome["authors"]


def test_zipf_text_is_seeded_and_sized(tmp_path):
    a = bench.write_zipf_text(str(tmp_path / "a.txt"), 0.2, vocab_size=2000)
    b = bench.write_zipf_text(str(tmp_path / "b.txt"), 0.2, vocab_size=2000)
    data = Path(a).read_bytes()
    assert data == Path(b).read_bytes() and data.endswith(b"\n")
    assert 200_000 <= len(data) <= 200_300
    lines = data.decode().splitlines()
    assert all(len(line.split()) <= 12 for line in lines[:-1])
    assert bench.counter_lines(a) == bench.counter_blocks(a)


class NoPool(SequentialExecutor):
    def worker_pids(self):
        return []


def test_a_failed_benchmark_leaves_no_temp_output(tmp_path, monkeypatch):
    def engine_breaks(*args, **kwargs):
        os.makedirs(os.path.join(args[2], "partial"))  # it had started writing
        raise RuntimeError("engine broke")

    monkeypatch.setattr(bench, "run_job", engine_breaks)
    monkeypatch.setattr(bench, "ProcessExecutor", lambda n: NoPool())
    monkeypatch.setattr(bench, "DaskExecutor", lambda n: NoPool())
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "zipf_0.01mb.txt").write_text("cached words\n")
    with pytest.raises(RuntimeError, match="engine broke"):
        bench.run_benchmark(size_mb=0.01, workers=[1], data_dir=str(tmp_path / "data"), repeats=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


@pytest.mark.slow
def test_benchmark_entry_on_a_small_file(tmp_path):
    rows = bench.run_benchmark(size_mb=0.5, workers=[2], data_dir=str(tmp_path), repeats=1)
    names = [r["name"] for r in rows]
    assert names == [
        "counter_lines",
        "counter_blocks",
        "sequential",
        "processes_2",
        "dask_2",
        "dask_bag_2",
    ]
    goals = {r["name"]: r["goal"] for r in rows if "goal" in r}
    assert goals == {
        "sequential": "vs_counter >= 0.8",
        "processes_2": "vs_sequential >= 1.8",
        "dask_2": "vs_dask_bag >= 1.5",
    }
    assert len({r["output_digest"] for r in rows if r["output_digest"]}) == 1
    assert all(r["mb_per_s"] > 0 for r in rows)


PROGS = {
    "mapreduce.run": "python -m mapreduce.run",
    "mapreduce.analyze": "python -m mapreduce.analyze",
    "mapreduce.generate": "python -m mapreduce.generate",
    "mapreduce.bench": "python -m mapreduce.bench",
    "mapreduce.partitioning.challenge_01_user_influence": (
        "python -m mapreduce.partitioning.challenge_01_user_influence"
    ),
}
RUN, ANALYZE, GENERATE, BENCH, CHALLENGE = PROGS
# (CLI, arguments, the flag the one-line error must name); {text}, {jsonl}, {data}, {done} are
# files made by the fixture: a text file, a JSON-lines file, a directory, a finished output.
BAD_INPUT = [
    (RUN, "--workers 0", "--workers"),
    (RUN, "--workers two", "--workers"),
    (RUN, "--partitions 0", "--partitions"),
    (RUN, "--split-mb 0", "--split-mb"),
    (RUN, "--split-mb nan", "--split-mb"),
    (RUN, "--split-mb inf", "--split-mb"),
    (RUN, "--k 0", "--k"),
    (RUN, "--max-attempts 0", "--max-attempts"),
    (RUN, "--max-bad-records -1", "--max-bad-records"),
    (RUN, "--max-bad-fraction 2", "--max-bad-fraction"),
    (RUN, "--show -1", "--show"),
    (RUN, "--encoding utf-16", "--encoding"),
    (RUN, "--encoding klingon", "--encoding"),
    (RUN, "--format csv", "--format"),
    (RUN, "median {text}", "JOB"),
    (RUN, "word_count missing.txt", "INPUT"),
    (RUN, "word_count {data} --output {data}", "--output"),
    (RUN, "word_count {data} --output {data}/out", "--output"),
    (RUN, "word_count {text} --output {done}", "--output"),
    (RUN, "word_count {text} --output {text}", "--output"),
    (RUN, "word_count {text} --work-dir missing", "--work-dir"),
    (RUN, "--scheduler tcp://127.0.0.1:8786", "--scheduler"),
    (ANALYZE, "{jsonl} --key nokey", "--key"),
    (ANALYZE, "{jsonl} --key kind", "--key"),
    (ANALYZE, "{text}", "input"),
    (ANALYZE, "missing.jsonl", "input"),
    (ANALYZE, "{jsonl} --partitions 1", "--partitions"),
    (ANALYZE, "{jsonl} --top-k 0", "--top-k"),
    (ANALYZE, "{jsonl} --chart missing/loads.png", "--chart"),
    (GENERATE, "--users 1", "--users"),
    (GENERATE, "--posts 0", "--posts"),
    (GENERATE, "--activity -1", "--activity"),
    (GENERATE, "--files 0", "--files"),
    (GENERATE, "--seed -1", "--seed"),
    (CHALLENGE, "{jsonl} --workers 0", "--workers"),
    (CHALLENGE, "{jsonl} --partitions 1", "--partitions"),
    (CHALLENGE, "{jsonl} --salts 0", "--salts"),
    (CHALLENGE, "missing.jsonl", "inputs"),
    (CHALLENGE, "{data} --output {data}", "--output"),
    (CHALLENGE, "{jsonl} --output {done}", "--output"),
    (CHALLENGE, "{jsonl}", "inputs"),
    (CHALLENGE, "{text}", "inputs"),
    (CHALLENGE, "{jsonl} --report missing/r.json", "--report"),
    (BENCH, "--size-mb 0", "--size-mb"),
    (BENCH, "--workers 2 0", "--workers"),
    (BENCH, "--repeats 0", "--repeats"),
    (BENCH, "--out missing/b.json", "--out"),
]


@pytest.fixture(scope="module")
def bad_input_answers(tmp_path_factory):
    """Every BAD_INPUT case run as its own process (4 at a time) from an empty directory."""
    cwd = tmp_path_factory.mktemp("cli_bad_input")
    data = cwd / "data"
    data.mkdir()
    (data / "a.txt").write_text("some words\n")
    done = cwd / "done"
    done.mkdir()
    (done / "_SUCCESS").touch()
    (cwd / "records.jsonl").write_text(
        '{"user_id": "u1", "kind": 1}\n{"user_id": "u2", "kind": "a"}\n'
    )
    files = {"text": data / "a.txt", "jsonl": cwd / "records.jsonl", "data": data, "done": done}

    def answer(case):
        module, args, _ = case
        try:
            return run_module(module, *args.format(**files).split(), cwd=cwd, timeout=30)
        except subprocess.TimeoutExpired as exc:  # it started working instead of refusing
            return subprocess.CompletedProcess(exc.cmd, None, "", f"timed out: {exc.stderr!r}")

    with ThreadPoolExecutor(4) as pool:
        answers = dict(zip(range(len(BAD_INPUT)), pool.map(answer, BAD_INPUT), strict=True))
    leftovers = sorted(p.name for p in cwd.iterdir())
    return answers, leftovers


@pytest.mark.parametrize("index", range(len(BAD_INPUT)), ids=[f"{m}:{a}" for m, a, _ in BAD_INPUT])
def test_bad_input_is_one_usage_line_and_exit_2(bad_input_answers, index):
    module, _, flag = BAD_INPUT[index]
    out = bad_input_answers[0][index]
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert errors == [out.stderr.splitlines()[-1]]
    assert errors[0].startswith(f"{PROGS[module]}: error: argument {flag}"), errors[0]


def test_bad_input_starts_no_work(bad_input_answers):
    assert bad_input_answers[1] == ["data", "done", "records.jsonl"]  # no runs/, no output


def test_challenge_never_replaces_finished_outputs(tmp_path, monkeypatch, capsys):
    """Without --output every run gets a new directory; an --output holding finished outputs is
    refused (exit 2, nothing touched) unless --overwrite."""
    [data] = generate.main(
        ["--out", str(tmp_path / "data"), "--users", "200", "--posts", "400", "--activity", "0"]
        + ["--engagement", "1500"]
    )
    monkeypatch.chdir(tmp_path)
    args = [data, "--engine", "sequential", "--partitions", "4"]
    first = challenge_01_user_influence.main(args)
    second = challenge_01_user_influence.main(args)
    assert first["output_dir"] != second["output_dir"]
    for outcome in (first, second):
        for name in challenge_01_user_influence.OUTPUTS:
            assert (Path(outcome["output_dir"]) / name / "_SUCCESS").is_file()
    report = Path(first["output_dir"]) / "hash" / "report.json"
    before = report.read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        challenge_01_user_influence.main([*args, "--output", first["output_dir"]])
    assert refused.value.code == 2 and "already holds finished outputs" in capsys.readouterr().err
    assert report.read_bytes() == before
    again = challenge_01_user_influence.main(
        [*args, "--output", first["output_dir"], "--overwrite"]
    )
    assert again["identical_results"] and report.read_bytes() != before
