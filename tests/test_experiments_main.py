"""`make run` (`python -m experiments.main`): the default transformer regression job, here with
tiny sizes and MoE FFNs; it prints its losses and the MoE statistics."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments import main
from tests.test_experiments_regression import TINY_TRANSFORMER


def test_default_job_prints_its_loss(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main.main([*TINY_TRANSFORMER[2:], "--moe", "--logdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "transformer (jax)" in out and "final train loss" in out
    assert "MoE: aux loss" in out and "dropped fraction" in out
