"""jaxml vs torchref LM training: from the same (converted) initial weights, on the same batches,
with the same AdamW + warmup-cosine + clipping schedule, every step's loss agrees for 24 steps,
with and without gradient accumulation, and so do the final validation loss and weights."""

import jax
import numpy as np
import pytest
import torch

from jaxml.configs import LMTrainConfig, default_lm_optimizer
from jaxml.configs.lm import LMConfig
from jaxml.data.text import PackedSequences, TokenData
from jaxml.models.lm import LM
from jaxml.training.lm_loop import init_lm_state
from jaxml.training.lm_loop import train_lm as jax_train
from parity.harness import assert_close, tolerance
from torchref.convert import load_jaxml_params, to_state_dict
from torchref.models.lm import LM as TorchLM
from torchref.training.lm_loop import train_lm as torch_train

VOCAB, SEQ, STEPS = 64, 16, 24


@pytest.fixture(scope="module")
def data():
    tokens = np.random.default_rng(0).integers(0, VOCAB, 4000).astype(np.int32)
    tokens[1::2] = (tokens[::2] * 7 + 3) % VOCAB
    return TokenData(
        PackedSequences(tokens[:3600], SEQ), PackedSequences(tokens[3600:], SEQ), VOCAB
    )


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_losses_agree_step_by_step(data, device, grad_accum):
    config = LMConfig(
        vocab_size=VOCAB, embed_dim=32, num_layers=2, num_heads=4, num_groups=2, max_seq_len=SEQ
    )
    train = LMTrainConfig(
        steps=STEPS,
        batch_size=8,
        seq_len=SEQ,
        grad_accum=grad_accum,
        optimizer=default_lm_optimizer(STEPS).replace(lr=1e-2),
        eval_every=STEPS,
        eval_batches=2,
        log_every=1,
        progress=False,
    )
    params = jax.device_get(init_lm_state(LM(config), train)[0].params)
    ours = jax_train(LM(config), data, train, params=params)
    torch.manual_seed(0)
    theirs = torch_train(load_jaxml_params(TorchLM(config), params), data, train, device=device)

    tol = tolerance("float32", device)
    losses = [
        [r["train_loss"] for r in result.history if "train_loss" in r] for result in (ours, theirs)
    ]
    assert len(losses[0]) == STEPS and losses[0][-1] < losses[0][0] - 0.3  # it learns
    assert_close("train loss per step", np.array(losses[0]), np.array(losses[1]), tol)
    assert_close("validation loss", ours.val_loss, theirs.val_loss, tol)
    final = to_state_dict(jax.device_get(ours.state.params))
    for key, value in theirs.state.model.state_dict().items():
        assert_close(f"final {key}", final[key].numpy(), value, tol)
