"""Run logging shared by both backends (no jax, no torch): tensorboardX scalars and figures,
the prediction-vs-target plot of regression runs, and the tqdm progress bar of training loops."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from tensorboardX import SummaryWriter
from tensorboardX.proto.event_pb2 import Event
from tqdm.auto import tqdm


class RunLogger:
    """Writes tensorboardX events under `logdir`; with `logdir=None` every call is a no-op."""

    def __init__(self, logdir: str | Path | None) -> None:
        self.logdir = None if logdir is None else Path(logdir)
        self._writer = None if logdir is None else SummaryWriter(str(logdir))

    def scalars(self, prefix: str, metrics: Mapping[str, float], step: int) -> None:
        """One scalar per entry, tagged `prefix/name` (e.g. `train/loss`)."""
        if self._writer is not None:
            for name, value in metrics.items():
                self._writer.add_scalar(f"{prefix}/{name}", float(value), step)

    def figure(self, tag: str, figure: Figure, step: int) -> None:
        if self._writer is not None:
            self._writer.add_figure(tag, figure, step)

    def text(self, tag: str, value: Mapping[str, Any] | str, step: int = 0) -> None:
        if self._writer is not None:
            body = value if isinstance(value, str) else json.dumps(value, indent=2, default=str)
            self._writer.add_text(tag, f"```\n{body}\n```", step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def prediction_figure(prediction: np.ndarray, target: np.ndarray, title: str = "") -> Figure:
    """Scatter of every predicted value against its target, with the `y = x` line."""
    pred = np.asarray(prediction, np.float64).ravel()
    true = np.asarray(target, np.float64).ravel()
    if pred.shape != true.shape:
        raise ValueError(f"prediction ({pred.size} values) and target ({true.size}) differ")
    fig = Figure(figsize=(4, 4), dpi=80)
    ax = fig.add_subplot()
    ax.scatter(true, pred, s=4, alpha=0.5)
    lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=1)
    ax.set_xlabel("target")
    ax.set_ylabel("prediction")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def loss_curve_figure(
    history: list[dict[str, float]], title: str = "", baseline: float | None = None
) -> Figure:
    """Training loss (every logged step) and validation loss (every evaluation) against the
    step, from rows `{"step", "train_loss"?, "val_loss"?}`; `baseline` (e.g. the unigram
    entropy) as a dashed line."""
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    for key, label, style in (("train_loss", "train", "-"), ("val_loss", "validation", "o-")):
        points = [(row["step"], row[key]) for row in history if key in row]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, style, label=label, markersize=3)
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", label=f"unigram baseline {baseline:.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def lm_flops_per_token(
    num_params: int, num_layers: int, embed_dim: int, seq_len: int, embedding_params: int = 0
) -> int:
    """Training FLOPs per token of a decoder-only transformer (PaLM appendix B): `6 N` for the
    matmuls forward + backward (N without the input embedding table, a lookup) plus
    `12 L d T` for the attention scores and mixing."""
    return 6 * (num_params - embedding_params) + 12 * num_layers * embed_dim * seq_len


def progress_bar(total: int, *, initial: int = 0, enabled: bool = True, desc: str = "train") -> Any:
    """A tqdm bar over `total` steps starting at `initial` (`enabled=False` hides it)."""
    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, dynamic_ncols=True)


def read_events(logdir: str | Path) -> dict[str, list[tuple[int, Any]]]:
    """Every summary written under `logdir`: `tag -> [(step, value), ...]` in write order.

    Scalars give floats, images their encoded PNG bytes, texts their string. Reads the
    TFRecord event files directly (no tensorboard install needed).
    """
    events: dict[str, list[tuple[int, Any]]] = {}
    for path in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            record = data[offset + 12 : offset + 12 + length]
            offset += 12 + length + 4
            event = Event.FromString(record)
            for value in event.summary.value:
                kind = value.WhichOneof("value")
                if kind == "simple_value":
                    item: Any = value.simple_value
                elif kind == "image":
                    item = value.image.encoded_image_string
                elif kind == "tensor" and value.tensor.string_val:
                    item = value.tensor.string_val[0].decode()
                else:
                    continue
                events.setdefault(value.tag, []).append((event.step, item))
    return events
