"""Checkpoints with orbax-checkpoint: the `TrainState` pytree plus a JSON `meta` item.

`Checkpointer` wraps `ocp.CheckpointManager`: a save is kept every `save_every` steps, only the
newest `keep` survive, and each is written to a temporary directory and renamed when complete
(orbax's atomic save), so an interrupted run never leaves a half-written checkpoint. `meta`
records what the arrays cannot: the data position (`epoch`, `batch`) and the run's settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxml.training.state import TrainState


class Checkpointer:
    def __init__(self, directory: str | Path, *, save_every: int = 100, keep: int = 3) -> None:
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, save_interval_steps=save_every, create=True
            ),
            item_names=("state", "meta"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(
        self, step: int, state: TrainState, meta: dict[str, Any], *, force: bool = False
    ) -> bool:
        """Save if `step` is a multiple of `save_every` (or `force`) and not saved yet."""
        if step in self.manager.all_steps():
            return False
        return bool(
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
                force=force,
            )
        )

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        """The JSON `meta` of `step` (default: the latest) without touching the arrays."""
        step = self._step(step)
        out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out.meta)

    def restore(
        self, template: TrainState, step: int | None = None
    ) -> tuple[TrainState, dict[str, Any]]:
        """`(state, meta)` of `step` (default: the latest); `template` gives the tree structure,
        shapes and dtypes (e.g. a freshly initialised state)."""
        step = self._step(step)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        return out.state, dict(out.meta)

    def _step(self, step: int | None) -> int:
        if step is None:
            step = self.latest_step()
        if step is None or step not in self.manager.all_steps():
            raise FileNotFoundError(
                f"no checkpoint {'' if step is None else f'for step {step} '}in {self.directory}"
            )
        return step

    def close(self) -> None:
        """Wait for pending (asynchronous) saves and release the manager."""
        self.manager.wait_until_finished()
        self.manager.close()
