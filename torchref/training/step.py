"""Train / eval steps, PyTorch twin of `jaxml.training.step` (metrics stay on the device)."""

from __future__ import annotations

import torch

from jaxml.data.loader import Batch
from torchref.training.losses import Metrics, objective
from torchref.training.optim import clip_gradients
from torchref.training.state import TrainState


def to_device(
    batch: Batch, device: str | torch.device
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """numpy `Batch` -> contiguous tensors on `device`."""

    def move(x: object) -> torch.Tensor:
        return torch.as_tensor(x).to(device).contiguous()

    return tuple(move(x) for x in batch.inputs), move(batch.targets)


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    loss: str = "mse",
    clip_norm: float | None = None,
    device: str | torch.device = "cpu",
) -> Metrics:
    """One optimizer (and scheduler) update; metrics add `grad_norm` (before clipping) and `lr`."""
    inputs, targets = to_device(batch, device)
    state.model.train()
    state.optimizer.zero_grad(set_to_none=True)
    total, metrics = objective(state.model, inputs, targets, loss)
    total.backward()
    grad_norm = clip_gradients(state.model.parameters(), clip_norm)
    lr = state.optimizer.param_groups[0]["lr"]
    state.optimizer.step()
    if state.scheduler is not None:
        state.scheduler.step()
    state.step += 1
    metrics = {k: v.detach() for k, v in metrics.items()}
    return {**metrics, "grad_norm": grad_norm.detach(), "lr": torch.tensor(lr)}


@torch.no_grad()
def eval_step(
    model: torch.nn.Module, batch: Batch, *, loss: str = "mse", device: str | torch.device = "cpu"
) -> Metrics:
    """Metrics of `model` on one batch (no update)."""
    inputs, targets = to_device(batch, device)
    model.eval()
    return objective(model, inputs, targets, loss)[1]
