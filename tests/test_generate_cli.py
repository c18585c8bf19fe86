"""`experiments.generate`: restores a train_sota checkpoint (jax or torch) with its tokenizer and
samples through the decoding loop; bad input is one `prog: error:` line and exit 2."""

from __future__ import annotations

import contextlib
import io

import pytest

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


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max_new_tokens", "40"], "--max_new_tokens 40 does not fit"),
        (["--prompt", ""], "--prompt must not be empty"),
        (["--temperature", "0"], "--temperature must be > 0"),
        (["--top_p", "1.5"], "--top_p must be in (0, 1]"),
        (["--step", "3"], "no checkpoint for step 3"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(run_dir, argv, message, capsys):
    assert generate.run(["--ckpt", str(run_dir), "--prompt", "The", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err.strip().splitlines()[-1]


def test_missing_checkpoint_directory(tmp_path, capsys):
    assert generate.run(["--ckpt", str(tmp_path / "none"), "--prompt", "x"]) == 2
    assert "no such checkpoint directory" in capsys.readouterr().err
