"""Data parallelism on the 8 forced CPU devices: the mesh-sharded jit step and the pmap step
give the same losses and parameters as one device for the same global batch.

Tolerance: atol 1e-6, rtol 1e-5 (float32; the global mean is summed in another order).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxml.configs import OptimizerConfig, RegressorConfig, TrainConfig, TransformerConfig
from jaxml.data.loader import Batch
from jaxml.data.synthetic import polynomial, sequence_sum
from jaxml.models.regression import MLPRegressor
from jaxml.models.transformer import TransformerModel
from jaxml.training.loop import fit
from jaxml.training.losses import module_apply
from jaxml.training.optim import make_optimizer, make_schedule
from jaxml.training.parallel import ParallelStep
from jaxml.training.state import TrainState, init_params

ATOL, RTOL = 1e-6, 1e-5
# SGD, not Adam: the attention key bias has an identically zero gradient, whose rounding noise
# Adam would normalise into lr-sized steps that differ between summation orders.
OPT = OptimizerConfig("sgd", 0.05, momentum=0.9, clip_norm=1.0)


def test_eight_devices_are_forced() -> None:
    assert jax.device_count() == 8


def test_mesh_and_pmap_steps_match_one_device() -> None:
    cfg = TransformerConfig(
        input_dim=1, embed_dim=8, ffn_latent_dim=16, num_heads=2, num_layers=1, max_seq_len=4
    )
    model = TransformerModel(cfg)
    data = sequence_sum(32, 4, seed=0)
    batches = [Batch(b.inputs, b.targets) for b in data.batches(16, seed=0, epoch=0)]
    tx = make_optimizer(OPT)
    params = init_params(model, batches[0].inputs, jax.random.key(0))
    start = TrainState.create(params, tx, jax.random.key(1))
    runs = {}
    for mode in ("none", "mesh", "pmap"):
        runner = ParallelStep(
            mode, module_apply(model), tx, make_schedule(OPT), num_devices=8, donate=False
        )
        assert runner.num_devices == (1 if mode == "none" else 8)
        state, losses = runner.device_state(start), []
        for batch in batches:
            state, metrics = runner(state, batch)
            losses.append(float(metrics["loss"]))
        runs[mode] = (losses, runner.host_state(state))
    ref_losses, ref_state = runs["none"]
    for mode in ("mesh", "pmap"):
        losses, state = runs[mode]
        np.testing.assert_allclose(losses, ref_losses, atol=ATOL, rtol=RTOL)
        assert int(state.step) == 2
        for a, b in zip(
            jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params), strict=True
        ):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("mode", ["mesh", "pmap"])
def test_fit_on_eight_devices_matches_one(mode: str, tmp_path) -> None:  # noqa: ANN001
    model = MLPRegressor(RegressorConfig(1, latent_dims=(8,)))
    train, val = polynomial(80, seed=0).split(0.2, seed=0)
    base = TrainConfig(epochs=2, batch_size=16, optimizer=OPT, progress=False)
    one = fit(model, train, val, base)
    many = fit(
        model,
        train,
        val,
        base.replace(parallel=mode, checkpoint_dir=str(tmp_path / "ckpt"), save_every=4),
    )
    np.testing.assert_allclose(
        [r["train_loss"] for r in many.history],
        [r["train_loss"] for r in one.history],
        atol=ATOL,
        rtol=RTOL,
    )
    np.testing.assert_allclose(
        many.val_metrics["loss"], one.val_metrics["loss"], atol=ATOL, rtol=RTOL
    )


def test_batch_must_divide_over_devices() -> None:
    model = MLPRegressor(RegressorConfig(1))
    train, val = polynomial(40, seed=0).split(0.25, seed=0)
    with pytest.raises(ValueError, match="divisible by the 8 devices"):
        fit(
            model, train, val, TrainConfig(epochs=1, batch_size=12, parallel="pmap", progress=False)
        )
    with pytest.raises(ValueError, match="num_devices=9"):
        ParallelStep(
            "mesh", module_apply(model), make_optimizer(OPT), make_schedule(OPT), num_devices=9
        )
