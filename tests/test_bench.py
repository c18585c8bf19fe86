"""The benchmark command runs, prints its table and writes JSON (speed itself is never asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import bench


def test_matmul_peak_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    results = bench.main(["matmul_peak", "--quick", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "## matmul_peak" in printed and "gflops" in printed
    saved = json.loads(out.read_text())
    assert saved["results"] == json.loads(json.dumps(results))
    assert {row["case"].split()[0] for row in saved["results"]["matmul_peak"]} == {
        "numpy",
        "jax",
        "torch",
    }
    assert all(row["gflops"] > 0 for row in saved["results"]["matmul_peak"])


def test_unknown_benchmark_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench.main(["no_such_bench"])
    assert "allowed: " in capsys.readouterr().err


def test_format_table_aligns_columns() -> None:
    table = bench.format_table("t", [{"case": "a", "x": 1.23456}, {"case": "bb", "x": 10.0}])
    assert table.splitlines() == ["## t", "case  x   ", "a     1.23", "bb    10  "]
