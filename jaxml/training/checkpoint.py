"""Checkpoints with orbax-checkpoint: the `TrainState` pytree plus a JSON `meta` item.

`Checkpointer` wraps `ocp.CheckpointManager`: a save is kept every `save_every` steps, only the
newest `keep` survive, and each is written to a temporary directory and renamed when complete
(orbax's atomic save), so an interrupted run never leaves a half-written checkpoint; temporary
directories left by a killed save are removed when a writing `Checkpointer` opens the directory.
`meta` records what the arrays cannot: the data position (`epoch`, `batch`) and the run's settings.

Reliability contract (shared with the torchref twin):
- `save` refuses a state holding NaN or inf (`FloatingPointError`), so a diverged run can never
  push good checkpoints out of the keep-last-`keep` window.
- `restore` / `read_meta` without a step take the newest *intact* checkpoint: a damaged newer one
  (missing or corrupt array, manifest, metadata or item) is named in a logged warning and skipped.
  `FileNotFoundError` says "no checkpoint in DIR" (none saved) or "no intact checkpoint in DIR"
  (all damaged, each with its reason).
- A `directory` that exists but is not a directory is refused at construction
  (`NotADirectoryError`), before any training.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from jaxml.training.state import TrainState

log = logging.getLogger(__name__)
TMP_SUFFIX = ".orbax-checkpoint-tmp"
T = TypeVar("T")


def is_finite(tree: Any) -> bool:
    """True when every inexact (float / complex) leaf of `tree` is free of NaN and inf."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return all(bool(jnp.isfinite(x).all()) for x in leaves)


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
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep,
            save_interval_steps=0 if read_only else save_every,
            create=not read_only,
        )
        if not read_only:  # temporary directories of saves killed before their rename
            for stale in self.directory.glob(f"*{TMP_SUFFIX}*"):
                shutil.rmtree(stale, ignore_errors=True)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(
        self, step: int, state: TrainState, meta: dict[str, Any], *, force: bool = False
    ) -> bool:
        """Save if `step` is a multiple of `save_every` (or `force`) and not saved yet.

        Raises FloatingPointError, saving nothing, when `state` holds NaN or inf.
        """
        if step in self.manager.all_steps():
            return False
        if not is_finite(state):
            raise FloatingPointError(
                f"refusing to checkpoint step {step} in {self.directory}: the state holds NaN "
                "or inf (the run diverged; earlier checkpoints are kept)"
            )
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
        """The JSON `meta` of `step` (default: the newest intact one) without reading arrays."""

        def read(s: int) -> dict[str, Any]:
            out = self.manager.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            return dict(out.meta)

        return self._newest_intact(read, step)[1]

    def restore(
        self, template: TrainState, step: int | None = None
    ) -> tuple[TrainState, dict[str, Any]]:
        """`(state, meta)` of `step` (default: the newest intact one); `template` gives the tree
        structure, shapes and dtypes (e.g. a freshly initialised state)."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)

        def read(s: int) -> tuple[TrainState, dict[str, Any]]:
            out = self.manager.restore(
                s,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                ),
            )
            if out.state is None or out.meta is None:
                raise KeyError("the state or meta item is missing")
            return out.state, dict(out.meta)

        return self._newest_intact(read, step)[1]

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
            except Exception as error:  # orbax / tensorstore / json raise many types
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
        """Wait for pending (asynchronous) saves and release the manager."""
        try:
            self.manager.wait_until_finished()
        finally:
            self.manager.close()


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else ""
