"""Command lines (run, generate, analyze, challenge) and the benchmark entry on tiny inputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mapreduce import analyze, bench, generate, run
from mapreduce.partitioning import challenge_01_user_influence

ROOT = Path(__file__).resolve().parents[2]


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
