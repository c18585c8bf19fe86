"""jaxml.training.lm_loop: data-parallel modes agree, accumulation is exact, resume is exact,
a NaN loss stops the run without saving it, and checkpoints are never overwritten."""

import shutil

import jax
import numpy as np
import pytest

from jaxml.configs import LMTrainConfig, OptimizerConfig, default_lm_optimizer
from jaxml.configs.lm import LMConfig
from jaxml.data.text import PackedSequences, TokenData
from jaxml.models.lm import LM
from jaxml.training.checkpoint import Checkpointer
from jaxml.training.lm_loop import NonFiniteLoss, init_lm_state, train_lm

VOCAB, SEQ = 64, 16


@pytest.fixture(scope="module")
def data():
    tokens = np.random.default_rng(0).integers(0, VOCAB, 4000).astype(np.int32)
    tokens[1::2] = (tokens[::2] * 7 + 3) % VOCAB  # learnable: every other token is determined
    return TokenData(
        PackedSequences(tokens[:3600], SEQ), PackedSequences(tokens[3600:], SEQ), VOCAB
    )


@pytest.fixture(scope="module")
def model():
    return LM(LMConfig(vocab_size=VOCAB, embed_dim=32, num_layers=1, num_heads=2, max_seq_len=SEQ))


def config(steps=6, **changes):
    base = LMTrainConfig(
        steps=steps,
        batch_size=8,
        seq_len=SEQ,
        optimizer=default_lm_optimizer(steps).replace(lr=1e-2),
        eval_every=3,
        eval_batches=2,
        log_every=3,
        save_every=2,
        progress=False,
    )
    return base.replace(**changes)


def max_diff(a, b):
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return tmp_path_factory.mktemp("reference")


@pytest.fixture(scope="module")
def reference(model, data, checkpoints):
    return train_lm(model, data, config(checkpoint_dir=checkpoints))


def test_loss_falls_and_history_is_complete(reference, checkpoints):
    train_rows = [r for r in reference.history if "train_loss" in r]
    val_rows = [r for r in reference.history if "val_loss" in r]
    assert [r["step"] for r in train_rows] == [3, 6] and [r["step"] for r in val_rows] == [3, 6]
    assert train_rows[-1]["tokens_per_sec"] > 0 and train_rows[0]["lr"] > 0
    assert val_rows[-1]["val_loss"] < val_rows[0]["val_loss"] < np.log(VOCAB) + 0.5
    assert reference.val_perplexity == pytest.approx(np.exp(reference.val_loss))
    assert int(reference.state.step) == 6 and reference.steps_run == 6
    assert Checkpointer(checkpoints).all_steps() == [2, 4, 6]


@pytest.mark.parametrize(
    "changes",
    [{"parallel": "mesh", "num_devices": 4, "grad_accum": 2}, {"parallel": "pmap"}],
    ids=["mesh4-accum2", "pmap8"],
)
def test_data_parallel_and_accumulation_match_one_device(model, data, reference, changes):
    assert jax.device_count() == 8  # conftest forces 8 CPU devices
    result = train_lm(model, data, config(**changes))
    assert max_diff(result.state.params, reference.state.params) < 2e-5
    assert result.val_loss == pytest.approx(reference.val_loss, abs=1e-5)


def test_resume_continues_exactly(model, data, reference, checkpoints, tmp_path):
    # The run as if it had died after step 2's checkpoint; resumed on an 8-device mesh.
    shutil.copytree(checkpoints / "2", tmp_path / "2")
    resumed = train_lm(model, data, config(checkpoint_dir=tmp_path, resume=True, parallel="mesh"))
    assert resumed.steps_run == 4
    assert max_diff(resumed.state.params, reference.state.params) < 2e-5
    assert Checkpointer(tmp_path).all_steps() == [2, 4, 6]


def test_existing_checkpoints_are_never_overwritten(checkpoints):
    with pytest.raises(FileExistsError, match="already holds checkpoints \\(latest step 6\\)"):
        train_lm(None, None, config(checkpoint_dir=checkpoints))
    with pytest.raises(ValueError, match="written with seed=0, this run has seed=1"):
        train_lm(None, None, config(checkpoint_dir=checkpoints, resume=True, seed=1))
    assert Checkpointer(checkpoints).all_steps() == [2, 4, 6]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(model, data, tmp_path):
    explode = OptimizerConfig("adamw", 1e30, schedule="cosine", warmup_steps=1, total_steps=6)
    run = config(optimizer=explode, checkpoint_dir=tmp_path, save_every=1)
    with pytest.raises(NonFiniteLoss, match="non-finite training loss .* at step") as err:
        train_lm(model, data, run)
    assert f"the last good checkpoint is step {err.value.step - 1}" in str(err.value)
    ckpt = Checkpointer(tmp_path)
    assert ckpt.latest_step() == err.value.step - 1
    state, _ = ckpt.restore(jax.eval_shape(lambda: init_lm_state(model, run)[0]))
    ckpt.close()
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
