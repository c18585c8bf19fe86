"""Checkpoints, PyTorch twin of `jaxml.training.checkpoint`: `DIR/<step>/state.pt` + `meta.json`.

Same contract as the orbax `Checkpointer`: saves every `save_every` steps, keeps the newest
`keep`, never overwrites a saved step, and writes each checkpoint into a temporary directory that
is renamed into place only when complete (atomic on POSIX file systems); temporary directories
left by a killed save are removed when a writing `Checkpointer` opens the directory. `save`
refuses a non-finite state (`FloatingPointError`); `restore` / `read_meta` without a step take the
newest intact checkpoint, naming each damaged one skipped in a logged warning, and raise
`FileNotFoundError` ("no checkpoint in DIR" / "no intact checkpoint in DIR: ...") otherwise.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from torchref.training.state import TrainState

log = logging.getLogger(__name__)
T = TypeVar("T")
TMP_PREFIX = ".tmp-"


def is_finite(state: dict[str, Any]) -> bool:
    """True when every floating-point tensor in the (nested) `state` dict is free of NaN and inf."""
    if isinstance(state, torch.Tensor):
        return not state.is_floating_point() or bool(torch.isfinite(state).all())
    if isinstance(state, dict):
        return all(is_finite(v) for v in state.values())
    if isinstance(state, list | tuple):
        return all(is_finite(v) for v in state)
    return not isinstance(state, float) or math.isfinite(state)


class Checkpointer:
    """Checkpoints of one run in `directory` (`read_only=True`: restore only; nothing is created,
    cleaned or deleted)."""

    def __init__(
        self,
        directory: str | Path,
        *,
        save_every: int = 100,
        keep: int = 3,
        read_only: bool = False,
    ) -> None:
        self.directory = Path(directory).absolute()
        if self.directory.exists() and not self.directory.is_dir():
            raise NotADirectoryError(f"checkpoint directory {self.directory} is not a directory")
        self.save_every = save_every
        self.keep = keep
        if not read_only:
            self.directory.mkdir(parents=True, exist_ok=True)
            for stale in self.directory.glob(f"{TMP_PREFIX}*"):
                shutil.rmtree(stale, ignore_errors=True)

    def all_steps(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        return sorted(
            int(p.name) for p in self.directory.iterdir() if p.name.isdigit() and p.is_dir()
        )

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(
        self, step: int, state: TrainState, meta: dict[str, Any], *, force: bool = False
    ) -> bool:
        """Save if `step` is a multiple of `save_every` (or `force`) and not saved yet.

        Raises FloatingPointError, saving nothing, when `state` holds NaN or inf.
        """
        target = self.directory / str(step)
        if target.exists() or not (force or step % self.save_every == 0):
            return False
        tensors = state.state_dict()
        if not is_finite({"model": tensors["model"], "optimizer": tensors["optimizer"]}):
            raise FloatingPointError(
                f"refusing to checkpoint step {step} in {self.directory}: the state holds NaN "
                "or inf (the run diverged; earlier checkpoints are kept)"
            )
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{step}-", dir=self.directory))
        try:
            torch.save(tensors, tmp / "state.pt")
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in self.all_steps()[: -self.keep]:
            shutil.rmtree(self.directory / str(old))
        return True

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        """The `meta` of `step` (default: the newest intact one)."""
        return self._newest_intact(self._read_meta, step)[1]

    def restore(self, state: TrainState, step: int | None = None) -> dict[str, Any]:
        """Load `step` (default: the newest intact one) into `state` in place; returns its meta."""

        def read(s: int) -> tuple[dict[str, Any], dict[str, Any]]:
            path = self.directory / str(s)
            tensors = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
            return tensors, self._read_meta(s)

        tensors, meta = self._newest_intact(read, step)[1]
        state.load_state_dict(tensors)
        return meta

    def _read_meta(self, step: int) -> dict[str, Any]:
        return dict(json.loads((self.directory / str(step) / "meta.json").read_text()))

    def _newest_intact(self, read: Callable[[int], T], step: int | None) -> tuple[int, T]:
        """`(step, read(step))`, trying `step` alone if given, else every step newest first."""
        steps = self.all_steps()
        if step is not None and step not in steps:
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}")
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        damaged: list[str] = []
        for candidate in [step] if step is not None else steps[::-1]:
            try:
                value = read(candidate)
            except Exception as error:  # torch.load / pickle / json raise many types
                reason = f"{type(error).__name__}: {_first_line(error)}"
                log.warning(
                    "checkpoint step %d in %s is damaged (%s); skipping it",
                    candidate,
                    self.directory,
                    reason,
                )
                damaged.append(f"step {candidate} ({reason})")
                continue
            if damaged:
                log.warning("restoring the newest intact checkpoint, step %d", candidate)
            return candidate, value
        raise FileNotFoundError(f"no intact checkpoint in {self.directory}: " + "; ".join(damaged))

    def close(self) -> None:
        """Nothing to wait for (saves are synchronous); mirrors the orbax `Checkpointer`."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else ""
