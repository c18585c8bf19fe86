"""Checkpoint failure paths on both backends: a damaged newest checkpoint falls back to the newest
intact one (named in a warning), an all-damaged or empty directory is a clear FileNotFoundError,
stale temporary directories of killed saves are removed, a file is refused as the directory, and a
diverging run stops with FloatingPointError without ever saving a non-finite state."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from jaxml.configs import OptimizerConfig, RegressorConfig, TrainConfig
from jaxml.data.synthetic import polynomial
from jaxml.models.regression import MLPRegressor
from jaxml.training.checkpoint import Checkpointer
from jaxml.training.loop import fit
from jaxml.training.state import TrainState
from torchref.models.regression import MLPRegressor as TorchMLP
from torchref.training.checkpoint import Checkpointer as TorchCheckpointer
from torchref.training.loop import fit as torch_fit
from torchref.training.state import TrainState as TorchState

CFG = RegressorConfig(1, latent_dims=(8,))
TRAIN, VAL = polynomial(80, seed=0).split(0.2, seed=0)  # 8 batches of 8 per epoch


def jax_state(value: float) -> TrainState:
    params = {"w": jnp.full((4, 3), value), "b": jnp.zeros(3)}
    return TrainState.create(params, optax.adam(1e-3), jax.random.key(0))


def torch_state(value: float) -> TorchState:
    model = torch.nn.Linear(3, 4)
    torch.nn.init.constant_(model.weight, value)
    return TorchState.create(model, OptimizerConfig("adam", 1e-3))


def two_jax_checkpoints(directory: Path) -> None:
    ckpt = Checkpointer(directory, save_every=1, keep=5)
    for step in (1, 2):
        ckpt.save(step, jax_state(float(step)), {"step": step})
    ckpt.close()


def two_torch_checkpoints(directory: Path) -> None:
    ckpt = TorchCheckpointer(directory, save_every=1, keep=5)
    for step in (1, 2):
        ckpt.save(step, torch_state(float(step)), {"step": step})


def _array_files(step_dir: Path) -> list[Path]:
    return [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]


JAX_DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated arrays": lambda s: [p.write_bytes(p.read_bytes()[:10]) for p in _array_files(s)],
    "deleted arrays": lambda s: [p.unlink() for p in _array_files(s)],
    "deleted manifest": lambda s: [p.unlink() for p in (s / "state").rglob("manifest.ocdbt")],
    "garbage _METADATA": lambda s: (s / "state" / "_METADATA").write_text("garbage{"),
    "deleted state/": lambda s: shutil.rmtree(s / "state"),
    "garbage meta": lambda s: (s / "meta" / "metadata").write_text("{bad"),
}
TORCH_DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated state.pt": lambda s: (s / "state.pt").write_bytes(
        (s / "state.pt").read_bytes()[:100]
    ),
    "deleted state.pt": lambda s: (s / "state.pt").unlink(),
    "garbage meta.json": lambda s: (s / "meta.json").write_text("{bad"),
    "deleted meta.json": lambda s: (s / "meta.json").unlink(),
}


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # see cli_main
@pytest.mark.parametrize("damage", JAX_DAMAGE)
def test_jax_damaged_newest_falls_back(
    damage: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    two_jax_checkpoints(tmp_path)
    JAX_DAMAGE[damage](tmp_path / "2")
    ckpt = Checkpointer(tmp_path, read_only=True)
    with caplog.at_level(logging.WARNING, logger="jaxml.training.checkpoint"):
        state, meta = ckpt.restore(jax_state(0.0))
    ckpt.close()
    assert meta == {"step": 1}
    np.testing.assert_array_equal(np.asarray(state.params["w"]), np.ones((4, 3)))
    assert "checkpoint step 2" in caplog.text and "damaged" in caplog.text
    assert "newest intact checkpoint, step 1" in caplog.text


@pytest.mark.parametrize("damage", TORCH_DAMAGE)
def test_torch_damaged_newest_falls_back(
    damage: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    two_torch_checkpoints(tmp_path)
    TORCH_DAMAGE[damage](tmp_path / "2")
    state = torch_state(0.0)
    with caplog.at_level(logging.WARNING, logger="torchref.training.checkpoint"):
        meta = TorchCheckpointer(tmp_path, read_only=True).restore(state)
    assert meta == {"step": 1}
    assert torch.equal(state.model.weight, torch.ones(4, 3))
    assert "checkpoint step 2" in caplog.text and "newest intact checkpoint, step 1" in caplog.text


def test_all_damaged_or_empty_is_a_clear_error(tmp_path: Path) -> None:
    two_jax_checkpoints(tmp_path / "jax")
    for step in ("1", "2"):
        shutil.rmtree(tmp_path / "jax" / step / "state")
    ckpt = Checkpointer(tmp_path / "jax", read_only=True)
    with pytest.raises(FileNotFoundError, match=r"no intact checkpoint in .*step 2 .*step 1 "):
        ckpt.restore(jax_state(0.0))
    ckpt.close()
    two_torch_checkpoints(tmp_path / "torch")
    for step in ("1", "2"):
        (tmp_path / "torch" / step / "state.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"no intact checkpoint in .*step 2 .*step 1 "):
        TorchCheckpointer(tmp_path / "torch").restore(torch_state(0.0))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        TorchCheckpointer(tmp_path / "empty").read_meta()
    ckpt = Checkpointer(tmp_path / "empty", read_only=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        ckpt.read_meta()
    ckpt.close()
    assert not (tmp_path / "missing").exists()
    ckpt = Checkpointer(tmp_path / "missing", read_only=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        ckpt.restore(jax_state(0.0))
    ckpt.close()
    assert not (tmp_path / "missing").exists()  # read_only creates nothing


def test_stale_temporary_directories_are_removed(tmp_path: Path) -> None:
    two_jax_checkpoints(tmp_path / "jax")
    stale = tmp_path / "jax" / "3.orbax-checkpoint-tmp-1234"
    shutil.copytree(tmp_path / "jax" / "2", stale)
    reader = Checkpointer(tmp_path / "jax", read_only=True)
    assert reader.all_steps() == [1, 2] and stale.exists()  # ignored, left to the writer
    reader.close()
    Checkpointer(tmp_path / "jax").close()
    assert not stale.exists()
    two_torch_checkpoints(tmp_path / "torch")
    (tmp_path / "torch" / ".tmp-3-abc").mkdir()
    (tmp_path / "torch" / ".tmp-3-abc" / "state.pt").write_bytes(b"partial")
    assert TorchCheckpointer(tmp_path / "torch", read_only=True).all_steps() == [1, 2]
    TorchCheckpointer(tmp_path / "torch")
    assert not (tmp_path / "torch" / ".tmp-3-abc").exists()


def test_a_file_is_refused_as_checkpoint_directory(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("not a directory")
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        Checkpointer(path)
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        TorchCheckpointer(path)
    assert path.read_text() == "not a directory"


def test_non_finite_state_is_never_saved(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path / "jax", save_every=1)
    with pytest.raises(FloatingPointError, match="refusing to checkpoint step 5"):
        ckpt.save(5, jax_state(float("nan")), {})
    ckpt.close()
    assert not any((tmp_path / "jax").iterdir())
    with pytest.raises(FloatingPointError, match="refusing to checkpoint step 5"):
        TorchCheckpointer(tmp_path / "torch", save_every=1).save(5, torch_state(float("inf")), {})
    assert not any((tmp_path / "torch").iterdir())


DIVERGING = TrainConfig(
    epochs=3,
    batch_size=8,
    optimizer=OptimizerConfig("sgd", 1e6),
    log_every=100,
    save_every=2,
    keep=2,
    progress=False,
)


def test_diverging_run_stops_and_keeps_good_checkpoints(tmp_path: Path) -> None:
    config = DIVERGING.replace(checkpoint_dir=str(tmp_path / "jax"))
    with pytest.raises(FloatingPointError, match=r"training diverged: loss \S+ at step \d+"):
        fit(MLPRegressor(CFG), TRAIN, VAL, config)
    ckpt = Checkpointer(tmp_path / "jax", read_only=True)
    steps = ckpt.all_steps()
    assert steps, "the finite early steps were checkpointed"
    state, _ = ckpt.restore(jax.tree.map(jnp.asarray, fit_template()))
    ckpt.close()
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(state.params))

    config = DIVERGING.replace(checkpoint_dir=str(tmp_path / "torch"))
    torch.manual_seed(0)
    with pytest.raises(FloatingPointError, match=r"training diverged: loss \S+ at step \d+"):
        torch_fit(TorchMLP(CFG), TRAIN, VAL, config)
    torch_ckpt = TorchCheckpointer(tmp_path / "torch", read_only=True)
    assert torch_ckpt.all_steps()
    for step in torch_ckpt.all_steps():
        state_dict = torch.load(tmp_path / "torch" / str(step) / "state.pt", weights_only=True)
        assert all(torch.isfinite(v).all() for v in state_dict["model"].values())
        meta = json.loads((tmp_path / "torch" / str(step) / "meta.json").read_text())
        assert meta["step"] == step


def fit_template() -> TrainState:
    from jaxml.training.loop import init_state

    return init_state(MLPRegressor(CFG), TRAIN, DIVERGING)[0]
