"""`python -m experiments.generate --draft-ckpt DRAFT --speculative-k K`: speculative sampling from
a jax-trained target and a torch-trained draft (same tokenizer) on both backends, and its one-line
input errors."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from experiments import generate, train_sota

TINY = [
    "--steps", "4", "--embed_dim", "32", "--num_heads", "2", "--num_groups", "1",
    "--vocab_size", "300", "--seq_len", "32", "--batch_size", "8", "--eval_every", "4",
    "--eval_batches", "1", "--log_every", "2", "--save_every", "4", "--max_new_tokens", "4",
    "--no_progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pair")
    runs = {
        "target": ["--num_layers", "2"],
        "draft": ["--num_layers", "1", "--backend", "torch"],
    }
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()):
        patch.setattr(generate, "sample", lambda *args, **kwargs: ["-"])  # not under test here
        for name, flags in runs.items():
            assert train_sota.run([*TINY, *flags, "--run_dir", str(root / name)]) == 0
    return root / "target", root / "draft"


def test_speculative_sampling_from_a_jax_target_and_a_torch_draft(
    pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    target, draft = pair
    argv = ["--ckpt", str(target), "--draft-ckpt", str(draft), "--speculative-k", "3"]
    argv += ["--prompt", "The if", "--max_new_tokens", "12", "--num_samples", "2", "--greedy"]
    assert generate.run(argv) == 0
    out, err = capsys.readouterr()
    samples = out.split("--- sample ")[1:]
    assert len(samples) == 2 and all(s.split("\n", 1)[1].startswith("The if") for s in samples)
    assert samples[0].split("\n", 1)[1] == samples[1].split("\n", 1)[1]  # greedy: identical rows
    assert "speculative k=3: acceptance " in err and "target calls" in err


def test_torch_backend_speculation_matches_jax_greedy_and_is_seeded(
    pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    target, draft = pair
    argv = ["--ckpt", str(target), "--draft-ckpt", str(draft), "--speculative-k", "4"]
    argv += ["--prompt", "The if", "--max_new_tokens", "12"]
    assert generate.run([*argv, "--greedy"]) == 0
    jax_greedy = capsys.readouterr()
    assert generate.run([*argv, "--greedy", "--backend", "torch"]) == 0
    assert capsys.readouterr() == jax_greedy  # the same tokens, acceptance and call counts
    sampled = [*argv, "--backend", "torch", "--num_samples", "2", "--seed", "5"]
    assert generate.run(sampled) == 0
    first = capsys.readouterr()
    assert first.out.startswith("--- sample 1\nThe if") and "speculative k=4: " in first.err
    assert generate.run(sampled) == 0
    assert capsys.readouterr() == first


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--speculative-k", "2"], "--speculative-k needs --draft-ckpt"),
        (["--draft-ckpt", "DRAFT", "--speculative-k", "0"], "--speculative-k must be a positive"),
        (["--draft-ckpt", "DRAFT", "--max_new_tokens", "5000"], "does not fit"),
    ],
)
def test_bad_speculative_flags_are_one_line_and_exit_2(
    pair: tuple[Path, Path], flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    target, draft = pair
    flags = [str(draft) if f == "DRAFT" else f for f in flags]
    assert generate.run(["--ckpt", str(target), "--prompt", "The", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("python -m experiments.generate: error: ") and message in err[-1]


def test_torch_backend_batch_runs_to_the_last_cache_slot(
    pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A row done at its budget is still fed k + 1 tokens while others go on: prompt + new + k."""
    target, draft = pair
    restored = generate.load_checkpoint(target)
    prompt_len = len(restored.tokenizer.encode("The if").ids)
    most = restored.config.max_seq_len - prompt_len - 2  # prompt + new + k = max_seq_len
    argv = ["--ckpt", str(target), "--draft-ckpt", str(draft), "--speculative-k", "2"]
    argv += ["--prompt", "The if", "--backend", "torch", "--num_samples", "3"]
    assert generate.run([*argv, "--max_new_tokens", str(most)]) == 0
    assert generate.run([*argv, "--max_new_tokens", str(most + 1)]) == 2
    assert "speculation needs --speculative-k = 2 more" in capsys.readouterr().err
