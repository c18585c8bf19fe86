"""`fit` in both backends: same seed => same numbers, another seed => other numbers; the loop
logs per-step and per-epoch metrics and MoE statistics."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import torch

from jaxml.configs import (
    FFNConfig,
    OptimizerConfig,
    RegressorConfig,
    TrainConfig,
    TransformerConfig,
)
from jaxml.data.synthetic import polynomial, sequence_sum
from jaxml.models.regression import MLPRegressor
from jaxml.models.transformer import TransformerModel
from jaxml.training.logging import RunLogger, read_events
from jaxml.training.loop import fit, predict
from jaxml.training.losses import module_apply
from torchref.models.regression import MLPRegressor as TorchMLP
from torchref.training.loop import fit as torch_fit
from torchref.training.loop import predict as torch_predict

CFG = RegressorConfig(1, latent_dims=(8,), activation="tanh")
TRAIN, VAL = polynomial(60, seed=0).split(0.2, seed=0)
BASE = TrainConfig(epochs=2, batch_size=8, optimizer=OptimizerConfig("adam", 1e-2), progress=False)


def test_same_seed_same_numbers_jax() -> None:
    model = MLPRegressor(CFG)
    a, b = fit(model, TRAIN, VAL, BASE), fit(model, TRAIN, VAL, BASE)
    c = fit(model, TRAIN, VAL, BASE.replace(seed=1))
    assert a.history == b.history and a.val_metrics == b.val_metrics
    for x, y in zip(jax.tree.leaves(a.state), jax.tree.leaves(b.state), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert a.history != c.history
    pred = predict(module_apply(model), a.state.params, VAL)
    assert pred.shape == VAL.targets.shape
    np.testing.assert_allclose(np.mean((pred - VAL.targets) ** 2), a.val_metrics["loss"], rtol=1e-5)


def test_same_seed_same_numbers_torch() -> None:
    def run(seed: int) -> tuple[list, np.ndarray]:
        torch.manual_seed(seed)
        result = torch_fit(TorchMLP(CFG), TRAIN, VAL, BASE.replace(seed=seed))
        return result.history, torch_predict(result.state.model, VAL)

    (h1, p1), (h2, p2), (h3, _) = run(0), run(0), run(1)
    assert h1 == h2 and h1 != h3
    np.testing.assert_array_equal(p1, p2)


def test_fit_logs_steps_epochs_and_moe_stats(tmp_path: Path) -> None:
    ffn = FFNConfig(8, 16, use_moe=True, num_experts=4, topk=1, capacity_factor=1.0)
    cfg = TransformerConfig(
        input_dim=1,
        embed_dim=8,
        ffn_latent_dim=16,
        num_heads=2,
        num_layers=1,
        max_seq_len=4,
        ffn_config=ffn,
    )
    train, val = sequence_sum(40, 4, seed=0).split(0.2, seed=0)
    config = BASE.replace(log_every=2, logdir=str(tmp_path))
    logger = RunLogger(tmp_path)
    result = fit(TransformerModel(cfg), train, val, config, logger=logger)
    logger.close()
    events = read_events(tmp_path)
    assert [step for step, _ in events["train/loss"]] == [2, 4, 6, 8]
    assert [step for step, _ in events["val/loss"]] == [4, 8]
    for tag in ("grad_norm", "lr", "samples_per_sec", "aux_loss", "dropped_fraction"):
        assert f"train/{tag}" in events
    assert events["train/aux_loss"][0][1] > 0.0
    assert 0.0 <= result.val_metrics["dropped_fraction"] <= 1.0
    np.testing.assert_allclose(
        result.val_metrics["loss"],
        result.val_metrics["task_loss"] + result.val_metrics["aux_loss"],
        rtol=1e-5,
    )
