"""The regression CLI's generation flags: `--use_kv_cache` / `--no-use_kv_cache`,
`--expanding_context` / `--sliding_window N` (the cached default runs in
test_experiments_regression; cached == recompute is tested on the library in test_generation)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from experiments import regression
from jaxml.models import generation

TINY = [
    "--type", "transformer", "--embed_dim", "8", "--num_heads", "2", "--num_layers", "1",
    "--ffn_latent_dim", "16", "--seq_len", "6", "--num_samples", "20", "--batch_size", "8",
    "--epochs", "1", "--no_progress",
]  # fmt: skip


def test_no_kv_cache_generates_by_recomputation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    recompute = generation.predict_autoregressively_recompute
    monkeypatch.setattr(
        generation,
        "predict_autoregressively_recompute",
        lambda *args: calls.append(args[3]) or recompute(*args),
    )
    flags = [*TINY, "--autoregressive", "--no-use_kv_cache", "--logdir", str(tmp_path)]
    result = regression.run(flags)
    assert math.isfinite(result["generation_mse"]) and calls == [3]  # steps = seq_len // 2


def test_sliding_window_generation(tmp_path: Path) -> None:
    flags = [*TINY, "--encoderdecoder", "--sliding_window", "2", "--logdir", str(tmp_path)]
    assert math.isfinite(regression.run(flags)["generation_mse"])


def test_bad_generation_flags(capsys: pytest.CaptureFixture[str]) -> None:
    for flags in (["--sliding_window", "0"], ["--expanding_context", "--sliding_window", "3"]):
        with pytest.raises(SystemExit) as exit_info:
            regression.main([*TINY, "--autoregressive", *flags])
        assert exit_info.value.code == 2
        assert "--sliding_window" in capsys.readouterr().err
