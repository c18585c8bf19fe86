"""Training parity: same initial weights, same batches, same optimizer => the same loss at every
step, for 25 steps, for the MLP and the transformer regressor (jaxml/optax vs torchref/torch).

Tolerance: the float32 table entry for the device (`parity.harness.tolerance`), applied to the
per-step losses and learning rates and to the final parameters. Differences are float rounding
(summation order, float32 vs float64 learning-rate arithmetic, clip_grad_norm_'s +1e-6) that
accumulates over steps: on CPU the parameters drift apart by ~1e-6 after 25 Adam steps.
The attention key bias is left out of the final comparison: softmax is invariant to adding
`q . b_k` to every score of a row, so its true gradient is 0 and both sides see rounding noise
(~1e-9), which Adam normalises into steps of ~lr; it has no effect on any output.
Gradient norms are not compared per step: near a minimum they are small differences of large
terms and their relative error (up to ~5e-5) says nothing about the update, which the loss and
parameter checks cover.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from jaxml.configs import OptimizerConfig, RegressorConfig, TransformerConfig
from jaxml.data.loader import ArrayDataset
from jaxml.data.synthetic import polynomial, sequence_sum
from jaxml.models.regression import MLPRegressor
from jaxml.models.transformer import TransformerModel
from jaxml.training.losses import module_apply
from jaxml.training.optim import make_optimizer, make_schedule
from jaxml.training.state import TrainState, init_params
from jaxml.training.step import make_train_step
from parity.harness import assert_close, tolerance
from torchref.convert import load_jaxml_params, to_state_dict
from torchref.models.regression import MLPRegressor as TorchMLP
from torchref.models.transformer import TransformerModel as TorchTransformer
from torchref.training.state import TrainState as TorchState
from torchref.training.step import train_step as torch_train_step

STEPS = 25
BATCH = 16

OPTIMIZERS = {
    "adam-cosine-clip": OptimizerConfig(
        "adam", 1e-2, schedule="cosine", warmup_steps=5, total_steps=STEPS, clip_norm=0.5
    ),
    "adamw-step": OptimizerConfig(
        "adamw", 1e-2, schedule="step", step_size=10, gamma=0.5, weight_decay=0.1
    ),
    "sgd-nesterov": OptimizerConfig("sgd", 5e-2, momentum=0.9, nesterov=True),
    "rmsprop-centered": OptimizerConfig("rmsprop", 1e-3, centered=True, decay=0.95),
}


def run_both(
    jax_model: object,
    torch_model: torch.nn.Module,
    data: ArrayDataset,
    opt: OptimizerConfig,
    device: str,
) -> dict[str, float]:
    tol = tolerance("float32", device)
    params = init_params(jax_model, next(data.eval_batches(BATCH)).inputs, jax.random.key(0))
    load_jaxml_params(torch_model, jax.tree.map(np.asarray, params))
    tx = make_optimizer(opt)
    state = TrainState.create(params, tx, jax.random.key(1))
    step = jax.jit(make_train_step(module_apply(jax_model), tx, make_schedule(opt)))
    tstate = TorchState.create(torch_model.to(device), opt)
    batches = [b for epoch in range(4) for b in data.batches(BATCH, seed=0, epoch=epoch)]
    assert len(batches) >= STEPS
    max_err = {"loss": 0.0, "lr": 0.0}
    for i, batch in enumerate(batches[:STEPS]):
        state, metrics = step(state, batch)
        tmetrics = torch_train_step(tstate, batch, clip_norm=opt.clip_norm, device=device)
        for name in ("loss", "lr"):
            assert_close(f"step {i} {name}", metrics[name], tmetrics[name], tol)
        for name in max_err:
            max_err[name] = max(max_err[name], abs(float(metrics[name]) - float(tmetrics[name])))
    torch_params = to_state_dict(jax.tree.map(np.asarray, state.params))
    for key, value in tstate.model.state_dict().items():
        if not key.endswith("k_proj.bias"):
            assert_close(f"final {key}", torch_params[key].numpy(), value, tol)
    return max_err


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_mlp_training_parity(name: str, device: str) -> None:
    cfg = RegressorConfig(1, latent_dims=(16, 16), activation="tanh")
    data = polynomial(128, seed=0)
    errors = run_both(MLPRegressor(cfg), TorchMLP(cfg), data, OPTIMIZERS[name], device)
    print(f"MLP {name}: max |loss_jax - loss_torch| over {STEPS} steps = {errors['loss']:.2e}")


def test_transformer_training_parity(device: str) -> None:
    cfg = TransformerConfig(
        input_dim=1,
        embed_dim=16,
        ffn_latent_dim=32,
        num_heads=4,
        num_layers=2,
        attention_type="gqa",
        num_groups=2,
        max_seq_len=8,
    )
    data = sequence_sum(128, 6, seed=0)
    opt = OPTIMIZERS["adam-cosine-clip"].replace(lr=1e-3)
    errors = run_both(TransformerModel(cfg), TorchTransformer(cfg), data, opt, device)
    print(f"transformer (gqa): max |loss diff| over {STEPS} steps = {errors['loss']:.2e}")
