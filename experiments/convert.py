"""Convert an LM checkpoint between Hugging Face, orbax and torchref formats.

    python -m experiments.convert SRC DST [--to hf|orbax|torch] [--config LM.json] [--step N]

Formats (SRC is recognised by its contents, DST by `--to`, else by its name):
- `hf`: a Hugging Face Llama/Mixtral directory (`config.json` + `model.safetensors` or shards with
  `model.safetensors.index.json`), see `jaxml.interop.hf`; `--shard-mb` splits the output.
- `orbax`: the project's checkpoint directory (`jaxml.training.checkpoint.Checkpointer`, or a run
  directory holding `checkpoints/`); the LM config is `meta["run"]["lm_config"]`. Written
  checkpoints hold step 0 with state `{"params": ...}` only (no optimizer state).
- `torch`: a torchref `state_dict` as one `.safetensors` file (`torchref.models.lm.LM` keys), the
  LM config as JSON in the file's metadata (`lm_config`); a file without it needs `--config`.
Without `--to`: a DST ending in `.safetensors` is `torch`; otherwise `orbax` when SRC is `hf`,
else `hf`. Nothing is unpickled (safetensors and JSON only); DST must not exist (or be an empty
directory), every input is checked before any conversion, and non-finite weights are never written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = ("hf", "orbax", "torch")
META_KEY = "lm_config"


def source_format(src: Path) -> str:
    if src.is_file():
        if src.suffix != ".safetensors":
            raise ValueError(f"{src}: a file source must be a torchref .safetensors state_dict")
        return "torch"
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such file or directory")
    return "hf" if (src / "config.json").is_file() else "orbax"


def target_format(dst: Path, to: str | None, source: str) -> str:
    if to is not None:
        return to
    if dst.suffix == ".safetensors":
        return "torch"
    return "orbax" if source == "hf" else "hf"


def _config_from_json(path: Path) -> Any:
    from jaxml.configs import LMConfig

    return LMConfig(**json.loads(path.read_text()))


def _orbax_dir(src: Path) -> Path:
    return src / "checkpoints" if (src / "checkpoints").is_dir() else src


def read(src: Path, kind: str, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """`(LMConfig, params tree of numpy arrays)` from `src`."""
    if kind == "hf":
        from jaxml.interop.hf import load_hf

        return load_hf(src)
    if kind == "torch":
        return _read_torch(src, args.config)
    return _read_orbax(_orbax_dir(src), args.step, args.config)


def _read_torch(src: Path, config_path: Path | None) -> tuple[Any, dict[str, Any]]:
    import safetensors
    import safetensors.torch

    from jaxml.configs import LMConfig
    from torchref.convert import from_state_dict

    with safetensors.safe_open(str(src), framework="numpy") as f:
        metadata = f.metadata() or {}
    if config_path is not None:
        config = _config_from_json(config_path)
    elif META_KEY in metadata:
        config = LMConfig(**json.loads(metadata[META_KEY]))
    else:
        raise ValueError(f"{src} has no {META_KEY!r} metadata: pass --config LM.json")
    state = safetensors.torch.load_file(str(src))
    return config, from_state_dict(state, _template(config))


def _read_orbax(
    directory: Path, step: int | None, config_path: Path | None
) -> tuple[Any, dict[str, Any]]:
    import jax
    import orbax.checkpoint as ocp

    from jaxml.configs import LMConfig
    from jaxml.training.checkpoint import Checkpointer

    ckpt = Checkpointer(directory, read_only=True)  # a source: create, clean, delete nothing
    try:
        meta = ckpt.read_meta(step)
        if config_path is not None:
            config = _config_from_json(config_path)
        elif META_KEY in meta.get("run", {}):
            config = LMConfig(**meta["run"][META_KEY])
        else:
            raise ValueError(f"{directory}: checkpoint meta has no run.{META_KEY}: pass --config")
        chosen = step if step is not None else max(ckpt.all_steps())
        restored = ckpt.manager.restore(
            chosen, args=ocp.args.Composite(state=ocp.args.StandardRestore())
        )
    finally:
        ckpt.close()
    state = restored.state
    params = state["params"] if isinstance(state, dict) else state.params
    params = jax.tree.map(np.asarray, dict(params))
    _check_shapes(params, config)
    return config, params


def _template(config: Any) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    from jaxml.models.lm import LM

    ids = jnp.zeros((1, 1), jnp.int32)
    shapes = jax.eval_shape(LM(config).init, jax.random.key(0), ids)["params"]
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def _check_shapes(params: dict[str, Any], config: Any) -> None:
    import jax

    expected = jax.tree.map(np.shape, _template(config))
    got = jax.tree.map(np.shape, params)
    if expected != got:
        raise ValueError("checkpoint params do not match the LM config's parameter shapes")


def write(
    dst: Path, kind: str, config: Any, params: dict[str, Any], args: argparse.Namespace
) -> None:
    if kind == "hf":
        from jaxml.interop.hf import save_hf

        shard = None if args.shard_mb is None else int(args.shard_mb * 2**20)
        save_hf(dst, config, params, max_shard_bytes=shard)
    elif kind == "torch":
        import safetensors.torch

        from torchref.convert import to_state_dict

        metadata = {META_KEY: json.dumps(dataclasses.asdict(config)), "format": "pt"}
        state = {key: t.contiguous() for key, t in to_state_dict(params).items()}
        safetensors.torch.save_file(state, str(dst), metadata=metadata)
    else:
        from jaxml.training.checkpoint import Checkpointer

        ckpt = Checkpointer(dst)
        try:
            meta = {
                "run": {META_KEY: dataclasses.asdict(config)},
                "step": 0,
                "source": str(args.src),
            }
            ckpt.save(0, {"params": params}, meta, force=True)  # type: ignore[arg-type]
        finally:
            ckpt.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="experiments.convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", type=Path, help="source checkpoint (format detected)")
    parser.add_argument("dst", type=Path, help="destination (must not exist)")
    parser.add_argument("--to", choices=FORMATS, help="destination format (default: see above)")
    parser.add_argument("--config", type=Path, help="LMConfig JSON for sources without one")
    parser.add_argument("--step", type=int, help="orbax source: the step to read (default newest)")
    parser.add_argument("--shard-mb", type=float, help="hf destination: max shard size in MiB")
    args = parser.parse_args(argv)
    try:
        args.source_format = source_format(args.src)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    args.target_format = target_format(args.dst, args.to, args.source_format)
    dst: Path = args.dst
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        parser.error(f"{dst} exists; refusing to overwrite it (choose a new destination)")
    if args.target_format == "torch" and dst.suffix != ".safetensors":
        parser.error(f"--to torch writes a .safetensors file; got {dst}")
    if args.config is not None and not args.config.is_file():
        parser.error(f"--config {args.config}: no such file")
    if args.shard_mb is not None and (args.target_format != "hf" or not args.shard_mb > 0):
        parser.error("--shard-mb needs an hf destination and a size > 0")
    if args.step is not None and args.source_format != "orbax":
        parser.error("--step applies to orbax sources only")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prog = "experiments.convert"
    try:
        config, params = read(args.src, args.source_format, args)
    except (ValueError, FileNotFoundError, KeyError) as error:
        print(f"{prog}: error: {args.src}: {error}", file=sys.stderr)
        return 2
    import jax

    if not all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params)):
        print(
            f"{prog}: error: {args.src} holds NaN or inf weights; nothing written", file=sys.stderr
        )
        return 1
    try:
        write(args.dst, args.target_format, config, params, args)
    except ValueError as error:  # e.g. a capacity-limited MoE has no Mixtral form
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    print(f"{args.source_format} {args.src} -> {args.target_format} {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
