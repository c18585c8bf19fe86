"""Every CLI × bad values: exit 2 and one `prog: error: ...` line naming the flag, no traceback,
before any training (each row runs `main` in-process and takes milliseconds; a few rows run as
real subprocesses to prove the process exits with the same line and never hangs)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from experiments import autograd, bench, bench_moe, classify, regression, sweep
from experiments import main as default_job

ROOT = Path(__file__).resolve().parents[1]

TRAINING_ROWS = [
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "-3"], "--epochs"),
    (["--batch_size", "0"], "--batch_size"),
    (["--lr", "0"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "abc"], "--lr"),
    (["--seed", "-1"], "--seed"),
    (["--threads", "0"], "--threads"),
    (["--threads", "-2"], "--threads"),
    (["--momentum", "nan"], "--momentum"),
    (["--clip_norm", "-1"], "--clip_norm"),
    (["--save_every", "0"], "--save_every"),
    (["--keep", "0"], "--keep"),
    (["--gamma", "inf"], "--gamma"),
    (["--num_devices", "0"], "--num_devices"),
    (["--optimizer", "lamb"], "--optimizer"),
    (["--predict"], "--predict"),
    (["--backend", "torch", "--parallel", "mesh"], "--parallel"),
    (["--backend", "torch", "--device", "cuda:7"], "--device cuda:7"),
    (["--backend", "torch", "--device", "toaster"], "--device 'toaster'"),
    (["--restore", "/nonexistent/ckpt"], "--restore /nonexistent/ckpt"),
    (["--logdir", "/proc/jaxml-run"], "--logdir /proc/jaxml-run"),
]
REGRESSION_ROWS = [
    (["--noise", "nan"], "--noise"),
    (["--noise", "-1"], "--noise"),
    (["--type", "nlinear", "--latent_dims", "64,,32"], "--latent_dims"),
    (["--type", "nlinear", "--latent_dims", ""], "--latent_dims"),
    (["--type", "nlinear", "--latent_dims", "a,b"], "--latent_dims"),
    (["--num_samples", "0"], "--num_samples"),
    (["--capacity_factor", "inf"], "--capacity_factor"),
    (["--type", "linear", "--moe"], "--moe"),
    (["--type", "transformer", "--num_heads", "3"], "num_heads=3"),
    (["--type", "transformer", "--attention_type", "gqa", "--num_groups", "3"], "num_groups=3"),
    (["--batch_size", "100000"], "batch_size=100000"),
    (["--schedule", "step", "--gamma", "2"], "gamma=2.0"),
]
CLASSIFY_ROWS = [
    (["--limit", "-100"], "--limit"),
    (["--limit", "0"], "--limit"),
    (["--channels", "abc"], "--channels"),
    (["--channels", ""], "--channels"),
    (["--hidden_dims", "8,,8"], "--hidden_dims"),
    (["--data", "/nonexistent/cifar"], "/nonexistent/cifar/data_batch_1"),
]
SWEEP_ROWS = [
    (["--lr", ""], "--lr"),
    (["--optimizer", ","], "--optimizer"),
    (["--latent_dims", "8;64,,32"], "--latent_dims"),
    (["--lr", "1e-3,inf"], "--lr"),
    (["--optimizer", "adam,lamb"], "--optimizer"),
]
OTHER_ROWS = [
    (autograd, ["--steps", "0"], "--steps"),
    (autograd, ["--lr", "inf"], "--lr"),
    (autograd, ["--hidden", "-1"], "--hidden"),
    (autograd, ["--seed", "-1"], "--seed"),
    (bench_moe, ["--repeats", "0"], "--repeats"),
    (bench_moe, ["--torch-threads", "0"], "--torch-threads"),
    (bench, ["matmul_peak", "--out", "/proc/no/such/bench.json"], "--out /proc/no/such/bench.json"),
    (bench, ["no_such_bench"], "unknown benchmark"),
]

CASES = [
    *[(regression, argv, flag) for argv, flag in TRAINING_ROWS + REGRESSION_ROWS],
    *[(classify, argv, flag) for argv, flag in TRAINING_ROWS + CLASSIFY_ROWS],
    *[(default_job, argv, flag) for argv, flag in TRAINING_ROWS[:4]],
    *[(sweep, argv, flag) for argv, flag in SWEEP_ROWS],
    *OTHER_ROWS,
]


def run_main(module: ModuleType, argv: list[str]) -> int:
    try:
        code = module.main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return code if isinstance(code, int) else 0


@pytest.mark.parametrize(
    ("module", "argv", "flag"),
    CASES,
    ids=[f"{m.__name__.split('.')[-1]}:{' '.join(a)}" for m, a, _ in CASES],
)
def test_bad_value_is_one_line_and_exit_2(
    module: ModuleType,
    argv: list[str],
    flag: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if module in (regression, classify, default_job) and "--logdir" not in argv:
        argv = [*argv, "--logdir", str(tmp_path / "run")]
    if module is sweep:
        argv = [*argv, "--sweep_dir", str(tmp_path / "sweep")]
    assert run_main(module, argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"python -m experiments.{module.__name__.split('.')[-1]}: error: ")
    assert flag in last
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("events*"))
    assert not (tmp_path / "sweep").exists()  # a sweep validates every point before any run


def test_output_locations_are_checked_before_training(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    for module in (regression, classify):
        for argv, flag in [
            (
                ["--checkpoint_dir", str(a_file), "--logdir", str(tmp_path / "r")],
                "--checkpoint_dir",
            ),
            (["--logdir", str(a_file)], "--logdir"),
        ]:
            with pytest.raises(ValueError, match=f"{flag} .*not a directory"):
                module.prepare(["--epochs", "1", *argv])
    assert a_file.read_text() == "mine"


def test_threads_apply_to_both_backends(tmp_path: Path) -> None:
    import torch

    threads, cpus = torch.get_num_threads(), os.sched_getaffinity(0)
    try:
        regression.prepare(
            ["--backend", "torch", "--threads", "1", "--logdir", str(tmp_path / "t")]
        )
        assert torch.get_num_threads() == 1
        regression.prepare(["--threads", "1", "--logdir", str(tmp_path / "j")])
        assert os.sched_getaffinity(0) == {min(cpus)}
    finally:
        torch.set_num_threads(threads)
        os.sched_setaffinity(0, cpus)


def test_bench_never_loses_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = {"meta": {}, "results": {"x": [{"case": "a", "ms": 1.5}]}}
    bench.save_results(report, "/proc/no/such/bench.json")
    out = capsys.readouterr().out
    assert "could not write /proc/no/such/bench.json" in out
    fallback = Path(out.split("results saved to ")[1].strip())
    assert fallback.read_text().count('"ms": 1.5') == 1
    fallback.unlink()
    out_file = tmp_path / "new.json"
    bench.check_writable(str(out_file))
    assert not out_file.exists()  # the probe leaves nothing behind


def cli(*argv: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


@pytest.mark.slow
def test_subprocess_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    rows = [
        (["-m", "experiments.regression", "--type", "linear", "--epochs", "1",
          "--checkpoint_dir", str(a_file), "--logdir", str(tmp_path / "r")], "--checkpoint_dir"),
        (["-m", "experiments.sweep", "--lr", "", "--sweep_dir", str(tmp_path / "s")], "--lr"),
    ]  # fmt: skip
    for argv, flag in rows:
        done = cli(*argv)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert "error: " in done.stderr.strip().splitlines()[-1] and flag in done.stderr


@pytest.mark.slow
def test_a_failed_orbax_save_does_not_hang_the_process(tmp_path: Path) -> None:
    """The checkpoint directory turns into a file after the checks: orbax's save thread fails
    and its signalling threads would wait forever; `exit_process` still exits (status 1)."""
    script = textwrap.dedent(
        f"""
        import shutil
        import jax, optax
        from experiments.common import exit_process
        from jaxml.training.checkpoint import Checkpointer
        from jaxml.training.state import TrainState

        def main():
            ckpt = Checkpointer({str(tmp_path / "ck")!r}, save_every=1)
            shutil.rmtree({str(tmp_path / "ck")!r})
            open({str(tmp_path / "ck")!r}, "w").close()
            state = TrainState.create({{"w": jax.numpy.ones(3)}}, optax.sgd(0.1), jax.random.key(0))
            ckpt.save(1, state, {{}})
            ckpt.close()
            return 0

        exit_process(main)
        """
    )
    done = cli("-c", script, timeout=120)
    assert done.returncode == 1
    assert "NotADirectoryError" in done.stderr or "Not a directory" in done.stderr
