"""`experiments.train_sota` across processes: a run killed with SIGKILL and resumed ends with the
parameters of an uninterrupted run; a damaged newest checkpoint is named and the previous one is
used; two processes on 127.0.0.1 (gloo CPU collectives) train the same steps as one process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments import train_sota
from experiments.generate import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12
TINY = [
    "--steps", str(STEPS), "--embed_dim", "32", "--num_layers", "1", "--num_heads", "2",
    "--num_groups", "1", "--vocab_size", "300", "--seq_len", "32", "--batch_size", "8",
    "--eval_every", "6", "--eval_batches", "2", "--log_every", "2", "--save_every", "2",
    "--max_new_tokens", "4", "--no_progress", "--parallel", "mesh",
]  # fmt: skip

pytestmark = pytest.mark.slow


def command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "experiments.train_sota", *TINY, *argv]


def environment(devices: int) -> dict[str, str]:
    flags = f"--xla_force_host_platform_device_count={devices}"
    return {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}


def steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


def params_of(run_dir: Path, step: int | None = None) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(load_checkpoint(run_dir, step).params)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run, in this process (8 forced CPU devices, mesh)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    assert train_sota.run([*TINY, "--run_dir", str(run_dir)]) == 0
    return run_dir


def test_sigkill_then_resume_ends_with_the_uninterrupted_parameters(reference, tmp_path):
    run_dir = tmp_path / "killed"
    victim = subprocess.Popen(
        command("--run_dir", str(run_dir)),
        cwd=ROOT, env=environment(8), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while not (run_dir / "checkpoints").is_dir() or not steps(run_dir):
        assert victim.poll() is None, victim.stderr.read().decode() if victim.stderr else ""
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)  # mid-run: possibly inside the next save
    victim.wait(timeout=30)
    saved = steps(run_dir)
    assert victim.returncode == -signal.SIGKILL and saved and saved[-1] < STEPS

    assert train_sota.run(["--run_dir", str(run_dir), "--resume", "--no_progress"]) == 0
    assert steps(run_dir)[-1] == STEPS
    for ours, theirs in zip(params_of(run_dir), params_of(reference), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_damaged_newest_checkpoint_is_named_and_the_previous_one_used(reference, tmp_path, capsys):
    run_dir = tmp_path / "damaged"
    shutil.copytree(reference, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / str(STEPS) / "state")  # a truncated save
    generated = subprocess.run(
        [sys.executable, "-m", "experiments.generate", "--ckpt", str(run_dir), "--prompt", "The",
         "--max_new_tokens", "4", "--greedy"],
        cwd=ROOT, env=environment(1), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    assert f"checkpoint step {STEPS} in" in generated.stderr and "damaged" in generated.stderr
    assert generated.stdout.startswith("The")
    # Resuming retrains the damaged step from the previous checkpoint and sets the bad one aside.
    shutil.rmtree(run_dir / "checkpoints" / str(STEPS - 2) / "state")
    assert train_sota.run(["--run_dir", str(run_dir), "--resume", "--no_progress"]) == 0
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert sum(".damaged-" in name for name in names) == 2 and str(STEPS) in names
    for ours, theirs in zip(params_of(run_dir), params_of(reference), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def reference_loss(run_dir: Path) -> float:
    """The final validation loss the reference run logged."""
    from jaxml.training.logging import read_events

    return float(read_events(run_dir)["val/val_loss"][-1][1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_processes_train_the_same_steps_as_one(reference, tmp_path):
    run_dir = tmp_path / "two"
    coordinator = f"127.0.0.1:{free_port()}"
    workers = [
        subprocess.Popen(
            command(
                "--run_dir",
                str(run_dir),
                "--coordinator",
                coordinator,
                "--num_processes",
                "2",
                "--process_id",
                str(i),
            ),
            cwd=ROOT,
            env=environment(1),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=300) for w in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-3000:]
    primary, secondary = (out for out, _ in outputs)
    reported = [line for line in primary.splitlines() if line.startswith("validation  loss")]
    assert reported and "validation" not in secondary  # process 0 alone reports
    assert float(reported[0].split()[2]) == pytest.approx(reference_loss(reference), abs=2e-4)
    assert steps(run_dir) == [8, 10, 12]
    for ours, theirs in zip(params_of(run_dir), params_of(reference), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
