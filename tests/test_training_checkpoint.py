"""Checkpoints: a run interrupted after N steps and resumed ends exactly where the
uninterrupted run ends (params, optimizer state, step, PRNG key; data position mid-epoch),
for both backends; only the last K are kept; existing checkpoints are never overwritten."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from jaxml.configs import OptimizerConfig, RegressorConfig, TrainConfig
from jaxml.data.synthetic import polynomial
from jaxml.models.regression import MLPRegressor
from jaxml.training.checkpoint import Checkpointer
from jaxml.training.logging import RunLogger
from jaxml.training.loop import fit
from torchref.models.regression import MLPRegressor as TorchMLP
from torchref.training.checkpoint import Checkpointer as TorchCheckpointer
from torchref.training.loop import fit as torch_fit

CFG = RegressorConfig(1, latent_dims=(8,))
TRAIN, VAL = polynomial(80, seed=0).split(0.2, seed=0)  # 64 examples: 8 batches of 8 per epoch
OPT = OptimizerConfig(
    "adamw",
    1e-2,
    schedule="cosine",
    warmup_steps=3,
    total_steps=24,
    weight_decay=0.1,
    clip_norm=1.0,
)
BASE = TrainConfig(epochs=3, batch_size=8, optimizer=OPT, log_every=1, progress=False)
N = 12  # save and "crash" in the middle of epoch 2 (batch 4 of 8)


class Interrupt(Exception):
    pass


class CrashAfter(RunLogger):
    """Raises once training has logged step `after` (a killed run)."""

    def __init__(self, after: int) -> None:
        super().__init__(None)
        self.after = after

    def scalars(self, prefix: str, metrics: dict, step: int) -> None:  # noqa: D102
        if step > self.after:
            raise Interrupt


def test_resume_is_exact(tmp_path: Path) -> None:
    model = MLPRegressor(CFG)
    straight = fit(model, TRAIN, VAL, BASE)
    config = BASE.replace(checkpoint_dir=str(tmp_path), save_every=N)
    with pytest.raises(Interrupt):
        fit(model, TRAIN, VAL, config, logger=CrashAfter(N), meta={"note": "first half"})
    ckpt = Checkpointer(tmp_path)
    assert ckpt.all_steps() == [N]
    meta = ckpt.read_meta()
    ckpt.close()
    assert (meta["epoch"], meta["batch"], meta["run"]) == (1, 4, {"note": "first half"})
    resumed = fit(model, TRAIN, VAL, config.replace(resume=True))
    a, b = jax.tree.leaves(straight.state), jax.tree.leaves(resumed.state)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert resumed.val_metrics == straight.val_metrics


def test_torch_resume_is_exact(tmp_path: Path) -> None:
    def run(config: TrainConfig, logger: RunLogger | None = None) -> torch.nn.Module:
        torch.manual_seed(0)
        return torch_fit(TorchMLP(CFG), TRAIN, VAL, config, logger=logger).state.model

    straight = run(BASE)
    config = BASE.replace(checkpoint_dir=str(tmp_path), save_every=N)
    with pytest.raises(Interrupt):
        run(config, CrashAfter(N))
    assert TorchCheckpointer(tmp_path).all_steps() == [N]
    resumed = run(config.replace(resume=True))
    for (name, x), y in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(x, y), name


def test_keep_last_k_and_never_overwrite(tmp_path: Path) -> None:
    model = MLPRegressor(CFG)
    config = BASE.replace(epochs=1, checkpoint_dir=str(tmp_path), save_every=3, keep=2)
    fit(model, TRAIN, VAL, config)
    ckpt = Checkpointer(tmp_path)
    assert ckpt.all_steps() == [6, 8]  # every 3 steps plus the final one, newest 2 kept
    ckpt.close()
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        fit(model, TRAIN, VAL, config)
    assert before == {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}


def test_torch_keep_last_k_and_never_overwrite(tmp_path: Path) -> None:
    config = BASE.replace(epochs=1, checkpoint_dir=str(tmp_path), save_every=3, keep=2)
    torch_fit(TorchMLP(CFG), TRAIN, VAL, config)
    assert TorchCheckpointer(tmp_path).all_steps() == [6, 8]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        torch_fit(TorchMLP(CFG), TRAIN, VAL, config)


def test_restore_missing_checkpoint_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        TorchCheckpointer(tmp_path).read_meta()
    ckpt = Checkpointer(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ckpt.read_meta()
    ckpt.close()
