"""Resuming and failing runs through the CLIs, on both backends: `--restore` refuses flags that
contradict the checkpoint and restores its checkpoint policy, a finished run says so, a damaged
newest checkpoint falls back (named), an empty directory says "no checkpoint", a diverging run
exits 1 keeping its good checkpoints, a refused directory gets no new files, and a run killed
with SIGKILL resumes from its last checkpoint."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import regression

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--type",
    "nlinear",
    "--latent_dims",
    "8",
    "--num_samples",
    "60",
    "--batch_size",
    "8",
    "--save_every",
    "4",
    "--keep",
    "2",
    "--log_every",
    "2",
    "--no_progress",
]  # fmt: skip  (48 training examples: 6 steps per epoch)


def train_tiny(tmp_path: Path, backend: str, epochs: int = 2) -> Path:
    regression.run(
        [*TINY, "--epochs", str(epochs), "--backend", backend, "--logdir", str(tmp_path / "run")]
    )
    return tmp_path / "run" / "checkpoints"


def steps(ckpt: Path) -> list[int]:
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())


def damage(step_dir: Path, backend: str) -> None:
    if backend == "jax":
        shutil.rmtree(step_dir / "state")
    else:
        (step_dir / "state.pt").write_bytes(b"truncated")


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_restore_refuses_conflicts_and_keeps_the_policy(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = train_tiny(tmp_path, backend)
    assert steps(ckpt) == [8, 12]  # every 4 steps + the final one, newest 2 kept
    capsys.readouterr()
    code = regression.main(
        ["--restore", str(ckpt), "--lr", "0.5", "--optimizer", "sgd", "--batch_size", "8",
         "--epochs", "3", "--logdir", str(tmp_path / "c")]
    )  # fmt: skip
    assert code == 2
    line = error_line(capsys)
    assert "--lr 0.5 (checkpoint: 0.001)" in line and "--optimizer sgd (checkpoint: adam)" in line
    assert "--batch_size" not in line  # the same value as the checkpoint's is no conflict
    assert regression.main(["--restore", str(ckpt), "--epochs", "2"]) == 2
    assert "already complete" in error_line(capsys) and steps(ckpt) == [8, 12]
    continued = regression.run(
        ["--restore", str(ckpt), "--epochs", "4", "--logdir", str(tmp_path / "c")]
    )
    assert continued["history"][-1]["step"] == 24
    assert steps(ckpt) == [20, 24]  # save_every 4 and keep 2 came back from the checkpoint


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_damaged_newest_checkpoint_falls_back_through_the_cli(
    backend: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    ckpt = train_tiny(tmp_path, backend)
    damage(ckpt / "12", backend)
    with caplog.at_level(logging.WARNING):
        continued = regression.run(
            ["--restore", str(ckpt), "--epochs", "3", "--logdir", str(tmp_path / "c")]
        )
    assert "checkpoint step 12" in caplog.text and "newest intact checkpoint, step 8" in caplog.text
    assert continued["history"][-1]["step"] == 18
    for step in steps(ckpt):
        damage(ckpt / str(step), backend)
    code = regression.main(["--restore", str(ckpt), "--predict", "--logdir", str(tmp_path / "p")])
    assert code == 1
    assert "no intact checkpoint in" in error_line(capsys)


def test_empty_checkpoint_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ck").mkdir()
    assert regression.main(["--restore", str(tmp_path / "ck")]) == 2
    assert f"no checkpoint in {tmp_path / 'ck'}" in error_line(capsys)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_diverging_run_exits_1_and_keeps_good_checkpoints(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*TINY, "--epochs", "3", "--optimizer", "sgd", "--lr", "1e6", "--save_every", "2",
            "--backend", backend, "--logdir", str(tmp_path)]  # fmt: skip
    assert regression.main(argv) == 1
    line = error_line(capsys)
    assert line.startswith("python -m experiments.regression: error: training diverged: loss")
    saved = steps(tmp_path / "checkpoints")
    assert saved and f"the last checkpoint (step {saved[-1]}) is kept" in line
    for step in saved:
        assert finite_checkpoint(tmp_path / "checkpoints" / str(step), backend)


def finite_checkpoint(step_dir: Path, backend: str) -> bool:
    import numpy as np

    if backend == "torch":
        import torch

        tensors = torch.load(step_dir / "state.pt", weights_only=True)["model"].values()
        return all(bool(torch.isfinite(t).all()) for t in tensors)
    import jax
    import orbax.checkpoint as ocp

    tree = ocp.PyTreeCheckpointer().restore(step_dir / "state")
    leaves = [np.asarray(x) for x in jax.tree.leaves(tree)]
    return all(np.isfinite(x).all() for x in leaves if x.dtype.kind == "f")


def test_refused_directory_gets_no_new_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train_tiny(tmp_path, "jax", epochs=1)
    before = sorted(p for p in (tmp_path / "run").rglob("*"))
    code = regression.main([*TINY, "--epochs", "1", "--logdir", str(tmp_path / "run")])
    assert code == 2 and "already holds checkpoints" in error_line(capsys)
    assert sorted(p for p in (tmp_path / "run").rglob("*")) == before


def _kill_after_first_checkpoint(argv: list[str], ckpt: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.regression", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while not (ckpt.is_dir() and steps(ckpt)) and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_sigkill_then_resume(backend: str, tmp_path: Path) -> None:
    ckpt = tmp_path / "run" / "checkpoints"
    argv = ["--type", "nlinear", "--latent_dims", "8", "--num_samples", "50", "--batch_size",
            "4", "--epochs", "100000", "--save_every", "5", "--backend", backend, "--no_progress",
            "--logdir", str(tmp_path / "run")]  # fmt: skip
    _kill_after_first_checkpoint(argv, ckpt)
    newest = steps(ckpt)[-1]
    meta_file = ckpt / str(newest) / ("meta.json" if backend == "torch" else "meta/metadata")
    epoch = json.loads(meta_file.read_text())["epoch"]
    done = regression.run(
        ["--restore", str(ckpt), "--epochs", str(epoch + 1), "--logdir", str(tmp_path / "c")]
    )
    assert done["history"][-1]["step"] == (epoch + 1) * 10  # 40 examples / 4 per batch
    assert not [p for p in ckpt.iterdir() if "tmp" in p.name]  # a killed save's leftovers
    newest = steps(ckpt)[-1]
    if backend == "jax":  # delete the array files: tensorstore fails mid-read
        for path in (ckpt / str(newest) / "state").rglob("*"):
            if path.is_file() and path.parent.name == "d":
                path.unlink()
    else:
        (ckpt / str(newest) / "state.pt").write_bytes(b"truncated")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    predicted = subprocess.run(
        [sys.executable, "-m", "experiments.regression", "--restore", str(ckpt), "--predict"],
        capture_output=True, text=True, timeout=180, cwd=ROOT, env=env,
    )  # fmt: skip
    assert predicted.returncode == 0 and "restored nlinear" in predicted.stdout
    assert f"checkpoint step {newest} in" in predicted.stderr and "damaged" in predicted.stderr
    assert "Traceback" not in predicted.stderr


def test_sweep_survives_a_diverged_point(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from experiments import sweep

    rows = sweep.run(
        ["--lr", "1e6,1e-2", "--optimizer", "sgd", "--type", "nlinear", "--latent_dims", "8",
         "--epochs", "2", "--num_samples", "60", "--batch_size", "8", "--sweep_dir", str(tmp_path)]
    )  # fmt: skip
    assert [r["lr"] for r in rows] == ["1e-2", "1e6"]  # the diverged run ranks last
    assert rows[0]["val_loss"] < float("inf") and rows[1]["val_loss"] != rows[1]["val_loss"]
    assert "training diverged" in capsys.readouterr().err
