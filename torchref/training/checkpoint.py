"""Checkpoints, PyTorch twin of `jaxml.training.checkpoint`: `DIR/<step>/state.pt` + `meta.json`.

Same contract as the orbax `Checkpointer`: saves every `save_every` steps, keeps the newest
`keep`, never overwrites a saved step, and writes each checkpoint into a temporary directory that
is renamed into place only when complete (atomic on POSIX file systems).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from torchref.training.state import TrainState


class Checkpointer:
    def __init__(self, directory: str | Path, *, save_every: int = 100, keep: int = 3) -> None:
        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.save_every = save_every
        self.keep = keep

    def all_steps(self) -> list[int]:
        return sorted(
            int(p.name)
            for p in self.directory.iterdir()
            if p.name.isdigit() and (p / "meta.json").is_file()
        )

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(
        self, step: int, state: TrainState, meta: dict[str, Any], *, force: bool = False
    ) -> bool:
        """Save if `step` is a multiple of `save_every` (or `force`) and not saved yet."""
        target = self.directory / str(step)
        if target.exists() or not (force or step % self.save_every == 0):
            return False
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{step}-", dir=self.directory))
        try:
            torch.save(state.state_dict(), tmp / "state.pt")
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in self.all_steps()[: -self.keep]:
            shutil.rmtree(self.directory / str(old))
        return True

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        return dict(json.loads((self._path(step) / "meta.json").read_text()))

    def restore(self, state: TrainState, step: int | None = None) -> dict[str, Any]:
        """Load `step` (default: the latest) into `state` in place; returns its meta."""
        path = self._path(step)
        state.load_state_dict(torch.load(path / "state.pt", weights_only=True, map_location="cpu"))
        return self.read_meta(int(path.name))

    def _path(self, step: int | None) -> Path:
        step = self.latest_step() if step is None else step
        if step is None or step not in self.all_steps():
            raise FileNotFoundError(
                f"no checkpoint {'' if step is None else f'for step {step} '}in {self.directory}"
            )
        return self.directory / str(step)
