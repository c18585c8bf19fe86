"""`experiments.generate`: restores a train_sota checkpoint (jax or torch) with its tokenizer and
samples through either backend's decoding loop; bad input is one `prog: error:` line and exit 2."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch

from experiments import generate, train_sota

TINY = [
    "--steps", "4", "--embed_dim", "32", "--num_layers", "1", "--num_heads", "2",
    "--num_groups", "1", "--vocab_size", "300", "--seq_len", "32", "--batch_size", "8",
    "--eval_every", "4", "--eval_batches", "1", "--save_every", "4", "--max_new_tokens", "4",
    "--no_progress", "--parallel", "none",
]  # fmt: skip


@pytest.fixture(scope="module", params=["jax", "torch"])
def run_dir(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param) / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        argv = [*TINY, "--backend", request.param, "--run_dir", str(path)]
        if request.param == "torch":
            argv.remove("--parallel")
            argv.remove("none")
        assert train_sota.run(argv) == 0
    return path


def generated(capsys, *argv: str) -> str:
    assert generate.run(list(argv)) == 0
    return capsys.readouterr().out


def test_samples_are_seeded_and_start_with_the_prompt(run_dir, capsys):
    args = ["--ckpt", str(run_dir), "--prompt", "The if", "--max_new_tokens", "12"]
    first = generated(capsys, *args, "--seed", "1", "--top_k", "20", "--top_p", "0.9")
    assert first.startswith("The if") and len(first) > len("The if\n")
    assert generated(capsys, *args, "--seed", "1", "--top_k", "20", "--top_p", "0.9") == first
    two = generated(capsys, *args, "--num_samples", "2", "--min_p", "0.05", "--max-new-tokens", "6")
    assert two.count("--- sample") == 2
    ckpt = str(run_dir / "checkpoints")
    greedy = generated(
        capsys, "--ckpt", ckpt, "--prompt", "The if", "--greedy", "--max_new_tokens", "8"
    )
    assert greedy == generated(
        capsys, *args[:4], "--greedy", "--max_new_tokens", "8", "--seed", "7"
    )


def test_torch_backend_greedy_matches_jax_and_its_samples_are_seeded(run_dir, capsys):
    args = ["--ckpt", str(run_dir), "--prompt", "The if", "--max_new_tokens", "12"]
    greedy = generated(capsys, *args, "--greedy", "--backend", "torch", "--device", "cpu")
    assert greedy == generated(capsys, *args, "--greedy") and greedy.startswith("The if")
    sampled = [*args, "--backend", "torch", "--num_samples", "2", "--top_k", "20", "--seed"]
    first = generated(capsys, *sampled, "1")
    rows = first.split("--- sample ")[1:]
    assert len(rows) == 2 and rows[0].split("\n", 1)[1] != rows[1].split("\n", 1)[1]
    assert all(r.split("\n", 1)[1].startswith("The if") for r in rows)
    assert generated(capsys, *sampled, "1") == first
    assert generated(capsys, *sampled, "2") != first


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="cuda is available here")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max_new_tokens", "40"], "--max_new_tokens 40 does not fit"),
        (["--prompt", ""], "--prompt must not be empty"),
        (["--temperature", "0"], "--temperature must be > 0"),
        (["--top_p", "1.5"], "--top_p must be in (0, 1]"),
        (["--step", "3"], "no checkpoint for step 3"),
        (["--device", "cpu"], "--device cpu needs --backend torch"),
        (["--backend", "torch", "--device", "tpu"], "'tpu' is not a torch device"),
        pytest.param(
            ["--backend", "torch", "--device", "cuda"],
            "cuda is not available on this machine",
            marks=NO_CUDA,
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(run_dir, argv, message, capsys):
    assert generate.run(["--ckpt", str(run_dir), "--prompt", "The", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err.strip().splitlines()[-1]


def test_missing_checkpoint_directory(tmp_path, capsys):
    assert generate.run(["--ckpt", str(tmp_path / "none"), "--prompt", "x"]) == 2
    assert "no such checkpoint directory" in capsys.readouterr().err


def test_unknown_backend_is_an_argparse_error(run_dir, capsys):
    with pytest.raises(SystemExit) as exited:
        generate.run(["--ckpt", str(run_dir), "--prompt", "The", "--backend", "tpu"])
    assert exited.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"{generate.PROG}: error: argument --backend: invalid choice: 'tpu'")
