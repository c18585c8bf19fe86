"""`TrainState`, PyTorch twin: the module, optimizer, scheduler and step count.

torch layers draw from the global generator, so its state stands for jaxml's `rng` in
checkpoints: `state_dict` records it and `load_state_dict` puts it back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from jaxml.configs import OptimizerConfig
from torchref.training.optim import make_optimizer, make_scheduler


@dataclass
class TrainState:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler | None
    step: int

    @classmethod
    def create(cls, model: torch.nn.Module, config: OptimizerConfig) -> TrainState:
        optimizer = make_optimizer(model.parameters(), config)
        return cls(model, optimizer, make_scheduler(optimizer, config), 0)

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "step": self.step,
            "rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        torch.set_rng_state(state["rng"])


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
