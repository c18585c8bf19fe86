"""`python -m experiments.classify`: the CNN on scikit-learn digits (learns to > 90% in a few
epochs) and on a CIFAR-10 fixture in the exact pickle format; both backends; restore."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments import classify
from tests.test_data_images import write_cifar_fixture


def test_digits_cnn_learns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = classify.run(["--epochs", "8", "--no_progress", "--logdir", str(tmp_path)])
    assert result["test_accuracy"] > 0.9
    assert "test accuracy" in capsys.readouterr().out


def test_digits_torch_backend(tmp_path: Path) -> None:
    result = classify.run(
        ["--backend", "torch", "--epochs", "3", "--limit", "256", "--batch_size", "16",
         "--lr", "1e-2", "--channels", "8", "--hidden_dims", "16", "--no_progress",
         "--logdir", str(tmp_path)]
    )  # fmt: skip
    assert result["num_classes"] == 10
    assert result["test_accuracy"] > 0.5  # 0.66 measured after 48 steps; chance is 0.1


def test_cifar10_fixture_and_restore(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "cifar-10-batches-py"
    data.mkdir()
    write_cifar_fixture(data)
    result = classify.run(
        ["--data", str(data), "--epochs", "2", "--batch_size", "5", "--channels", "4",
         "--hidden_dims", "8", "--no_progress", "--logdir", str(tmp_path / "run")]
    )  # fmt: skip
    assert result["dataset"] == "cifar10" and result["num_classes"] == 10
    restored = classify.run(
        [
            "--restore",
            str(tmp_path / "run" / "checkpoints"),
            "--predict",
            "--logdir",
            str(tmp_path / "p"),
        ]
    )
    assert restored["test_accuracy"] == pytest.approx(result["test_accuracy"])
    assert restored["test_loss"] == pytest.approx(result["test_loss"], rel=1e-6)  # 2 images
    assert "first 10 test images" in capsys.readouterr().out
