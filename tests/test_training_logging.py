"""Run logging: tensorboardX scalars, figures and text read back from the event files; the
prediction-vs-target figure; the progress bar and its switch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jaxml.training.logging import RunLogger, prediction_figure, progress_bar, read_events


def test_scalars_figures_and_text_are_written(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path)
    logger.scalars("train", {"loss": 0.5, "lr": 1e-3}, step=1)
    logger.scalars("train", {"loss": 0.25, "lr": 1e-3}, step=2)
    target = np.linspace(-1, 1, 20)
    logger.figure("val/prediction_vs_target", prediction_figure(target + 0.1, target), step=2)
    logger.text("run", {"type": "nlinear"})
    logger.close()
    events = read_events(tmp_path)
    assert events["train/loss"] == [(1, 0.5), (2, 0.25)]
    assert events["train/lr"][0][1] == pytest.approx(1e-3)
    ((step, png),) = events["val/prediction_vs_target"]
    assert step == 2 and png.startswith(b"\x89PNG")
    assert '"nlinear"' in events["run/text_summary"][0][1]


def test_no_logdir_writes_nothing(tmp_path: Path) -> None:
    logger = RunLogger(None)
    logger.scalars("train", {"loss": 1.0}, step=1)
    logger.close()
    assert read_events(tmp_path) == {}


def test_prediction_figure_checks_sizes() -> None:
    fig = prediction_figure(np.zeros((4, 3, 1)), np.ones((4, 3)))
    assert fig.axes[0].get_xlabel() == "target"
    with pytest.raises(ValueError, match="differ"):
        prediction_figure(np.zeros(3), np.zeros(4))


def test_progress_bar_can_be_disabled(capsys: pytest.CaptureFixture[str]) -> None:
    with progress_bar(5, enabled=False) as bar:
        bar.update(5)
    assert capsys.readouterr().err == ""
    with progress_bar(5, initial=2, desc="fit") as bar:
        bar.update(3)
    err = capsys.readouterr().err
    assert "fit" in err and "5/5" in err
