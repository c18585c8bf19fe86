"""`python -m experiments.sweep`: the grid is the product of the given values, every point is a
regression run, and the table is ranked by validation loss."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments import sweep


def test_grid_is_the_product() -> None:
    args = sweep.build_parser().parse_args(
        ["--lr", "1e-3,1e-2", "--optimizer", "adam", "--latent_dims", "8,4;16"]
    )
    assert sweep.grid(args) == [
        {"lr": "1e-3", "optimizer": "adam", "latent_dims": "8,4"},
        {"lr": "1e-3", "optimizer": "adam", "latent_dims": "16"},
        {"lr": "1e-2", "optimizer": "adam", "latent_dims": "8,4"},
        {"lr": "1e-2", "optimizer": "adam", "latent_dims": "16"},
    ]


def test_sweep_ranks_by_validation_loss(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = sweep.run(
        ["--lr", "1e-4,5e-2", "--optimizer", "adam,sgd", "--type", "linear", "--epochs", "3",
         "--num_samples", "64", "--batch_size", "16", "--sweep_dir", str(tmp_path)]
    )  # fmt: skip
    assert len(rows) == 4
    losses = [r["val_loss"] for r in rows]
    assert losses == sorted(losses)
    assert rows[-1]["lr"] == "1e-4"  # the tiny learning rate barely moves in 3 epochs
    table = capsys.readouterr().out.splitlines()[-6:]
    assert table[0].split()[:3] == ["rank", "lr", "optimizer"] and table[2].startswith("1 ")
    assert len(list(tmp_path.iterdir())) == 4
