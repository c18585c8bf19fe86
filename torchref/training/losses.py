"""Losses and the training objective, PyTorch twin of `jaxml.training.losses`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from jaxml.configs import LOSS_NAMES

Metrics = dict[str, torch.Tensor]


def mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element; shapes must match."""
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ"
        )
    return F.mse_loss(prediction.float(), target)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`logits: [batch, classes]`, integer `labels: [batch]` -> mean softmax cross-entropy."""
    return F.cross_entropy(logits.float(), labels.long())


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=-1) == labels).float().mean()


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse": mse,
    "cross_entropy": cross_entropy,
}


def split_output(output: Any) -> tuple[torch.Tensor, Mapping[str, torch.Tensor]]:
    """`prediction` or `(prediction, aux)` -> `(prediction, aux)` with `aux["aux_loss"]`."""
    if isinstance(output, tuple):
        prediction, aux = output
        return prediction, aux
    return output, {"aux_loss": torch.zeros((), device=output.device)}


def check_loss(name: str) -> None:
    if name not in LOSSES:
        raise ValueError(f"loss={name!r} is invalid: allowed values are {', '.join(LOSS_NAMES)}")


def objective(
    model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], targets: torch.Tensor, loss: str
) -> tuple[torch.Tensor, Metrics]:
    """`(task + aux loss, metrics)`, the same metrics as `jaxml.training.losses.objective`."""
    check_loss(loss)
    prediction, aux = split_output(model(*inputs))
    task = LOSSES[loss](prediction, targets)
    total = task + aux["aux_loss"]
    metrics = {"loss": total, "task_loss": task, "aux_loss": aux["aux_loss"]}
    if loss == "cross_entropy":
        metrics["accuracy"] = accuracy(prediction, targets)
    if "dropped_fraction" in aux:
        metrics["dropped_fraction"] = aux["dropped_fraction"]
    return total, metrics
