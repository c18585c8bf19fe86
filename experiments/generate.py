"""`python -m experiments.generate`: sample text from a `train_sota` checkpoint or a Hugging Face
Llama / Mixtral directory.

    python -m experiments.generate --ckpt DIR --prompt "The if statement"
        [--max_new_tokens 100] [--temperature 0.8] [--top_k 40] [--top_p 0.95] [--min_p 0.05]
        [--greedy] [--num_samples 1] [--seed 0] [--step N]
        [--draft-ckpt DRAFT_DIR [--speculative-k 4]] [--backend jax|torch [--device cpu]]

`DIR` is a run directory or its `checkpoints/` folder: the checkpoint's model settings and the
tokenizer saved beside it are restored; jax and torch checkpoints both work (weights are
converted). `DIR` may also be a Hugging Face directory (`config.json`, `model.safetensors` or
shards, `tokenizer.json`): it is read by `jaxml.interop.hf`, and generation stops at
`config.json`'s `eos_token_id`. `--backend` picks the decoding loop that samples: jaxml's
(default) or torchref's on `--device`. Greedy output is the same on both; a seed draws jax noise
on one and torch noise on the other, so sampled rows differ between backends. With
`--draft-ckpt`, a smaller LM trained on the same tokenizer drafts `--speculative-k` tokens per round for the target to verify
(speculative decoding, docs/speculative.md): the same output distribution, fewer target calls.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments.common import BACKENDS, check_device, cli_main, exit_process
from jaxml.configs import SamplingConfig
from jaxml.configs.lm_training import LMTrainConfig
from jaxml.data.text import EOS, DataError, TokenData, load_tokenizer

PROG = "python -m experiments.generate"
SAMPLE = SamplingConfig(temperature=1.0)  # the samplers' default: the model's own distribution
Texts = list[str]


@dataclass
class Restored:
    """A trained LM: its config, params (jax arrays), tokenizer, the id that ends a row (None:
    none does), step and training settings (None for a Hugging Face directory)."""

    config: Any
    params: Any
    tokenizer: Any
    eos_id: int | None
    step: int
    train: LMTrainConfig | None

    def evaluate(self, data: TokenData, train: LMTrainConfig) -> dict[str, float]:
        """Validation loss and perplexity on one device (`train`'s batch and eval sizes)."""
        import jax

        from jaxml.models.lm import LM
        from jaxml.training.lm_loop import evaluate_lm
        from jaxml.training.lm_step import make_lm_eval_step
        from jaxml.training.losses import module_apply

        step = jax.jit(make_lm_eval_step(module_apply(LM(self.config))))
        batch = min(train.batch_size, len(data.val))
        return evaluate_lm(
            lambda rows: step(self.params, rows), data.val, batch, train.eval_batches
        )


def checkpoint_dir(path: str | Path) -> Path:
    """`path/checkpoints` when `path` is a run directory, else `path`."""
    path = Path(path)
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def load_checkpoint(path: str | Path, step: int | None = None) -> Restored:
    """Restore the newest (or `step`'s) checkpoint under `path` with its tokenizer."""
    import jax

    from jaxml.configs.lm import LMConfig
    from jaxml.models.lm import LM
    from jaxml.training.lm_loop import init_lm_state

    directory = checkpoint_dir(path)
    if not directory.is_dir():
        raise DataError(f"{path}: no such checkpoint directory")
    if is_hf_directory(directory):
        return _load_hf(directory, step)
    tokenizer = load_tokenizer(directory / "tokenizer.json")
    torch_steps = sorted(int(p.parent.name) for p in directory.glob("*/state.pt"))
    if torch_steps:
        return _load_torch(directory, tokenizer, step or torch_steps[-1])
    from jaxml.training.checkpoint import Checkpointer

    ckpt = Checkpointer(directory)
    try:
        meta = ckpt.read_meta(step)
        config = LMConfig(**meta["run"]["lm_config"])
        train = LMTrainConfig.from_dict(meta["train"])
        template = on_one_device(jax.eval_shape(lambda: init_lm_state(LM(config), train)[0]))
        state, meta = ckpt.restore(template, step)
    finally:
        ckpt.close()
    eos_id = tokenizer.token_to_id(EOS)
    return Restored(config, state.params, tokenizer, eos_id, int(meta["step"]), train)


def is_hf_directory(directory: Path) -> bool:
    from jaxml.interop.hf import CONFIG_FILE, INDEX_FILE, SINGLE_FILE

    weights = (directory / SINGLE_FILE).is_file() or (directory / INDEX_FILE).is_file()
    return (directory / CONFIG_FILE).is_file() and weights


def _load_hf(directory: Path, step: int | None) -> Restored:
    """A Hugging Face Llama/Mixtral directory with its `tokenizer.json`; `eos_id` from
    `config.json` (the first of a list)."""
    import jax

    from jaxml.interop.hf import CONFIG_FILE, load_hf

    if step is not None:
        raise ValueError(f"--step {step}: {directory} is a Hugging Face directory, it has no steps")
    tokenizer = load_tokenizer(directory / "tokenizer.json")
    config, params = load_hf(directory)
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise DataError(
            f"{directory}: tokenizer.json has {tokenizer.get_vocab_size()} tokens, more than "
            f"config.json's vocab_size={config.vocab_size}"
        )
    eos = json.loads((directory / CONFIG_FILE).read_text()).get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) and eos else eos
    if eos is not None and not (isinstance(eos, int) and 0 <= eos < config.vocab_size):
        raise DataError(f"{directory}: config.json eos_token_id={eos!r} is not a token id")
    return Restored(config, jax.tree.map(jax.numpy.asarray, params), tokenizer, eos, 0, None)


def on_one_device(abstract: Any) -> Any:
    """Shapes and dtypes placed on the first device: restores a checkpoint written from any
    number of devices (a mesh, pmap) into this process."""
    import jax

    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract)


def _load_torch(directory: Path, tokenizer: Any, step: int) -> Restored:
    import jax
    import torch

    from jaxml.configs.lm import LMConfig
    from jaxml.models.lm import LM
    from jaxml.training.lm_loop import init_lm_state
    from torchref.convert import from_state_dict

    folder = directory / str(step)
    if not (folder / "state.pt").is_file():
        raise DataError(f"{directory}: no checkpoint for step {step}")
    meta = json.loads((folder / "meta.json").read_text())
    config = LMConfig(**meta["run"]["lm_config"])
    train = LMTrainConfig.from_dict(meta["train"])
    template = jax.eval_shape(lambda: init_lm_state(LM(config), train)[0].params)
    state = torch.load(folder / "state.pt", weights_only=True, map_location="cpu")
    params = jax.tree.map(jax.numpy.asarray, from_state_dict(state["model"], template))
    return Restored(config, params, tokenizer, tokenizer.token_to_id(EOS), step, train)


def check_prompt(tokenizer: Any, prompt: str, max_new_tokens: int, max_seq_len: int) -> list[int]:
    """The prompt's token ids; ValueError when it is empty or it and `max_new_tokens` exceed
    the model's `max_seq_len`."""
    ids = tokenizer.encode(prompt).ids
    if not ids:
        raise ValueError("--prompt must not be empty")
    room = max_seq_len - len(ids)
    if max_new_tokens > room:
        raise ValueError(
            f"--max_new_tokens {max_new_tokens} does not fit: the prompt has {len(ids)} tokens "
            f"and the model's max_seq_len is {max_seq_len} (at most {room} new tokens)"
        )
    return list(ids)


def sample(
    restored: Restored,
    prompt: str,
    *,
    max_new_tokens: int,
    sampling: SamplingConfig = SAMPLE,
    num_samples: int = 1,
    seed: int = 0,
) -> list[str]:
    """`num_samples` continuations of `prompt` (prompt included), decoded to text; a row ends
    at the end-of-text token."""
    import jax
    import jax.numpy as jnp

    from jaxml.models.lm import generate

    ids = check_prompt(restored.tokenizer, prompt, max_new_tokens, restored.config.max_seq_len)
    generated = generate(
        restored.params,
        restored.config,
        jnp.asarray([ids] * num_samples, jnp.int32),
        max_new_tokens=max_new_tokens,
        sampling_config=sampling,
        key=jax.random.key(seed),
        eos_id=restored.eos_id,
    )
    tokens, counts = jax.device_get((generated.tokens, generated.num_generated))
    return decode_rows(restored.tokenizer, ids, tokens, counts)


def decode_rows(tokenizer: Any, ids: list[int], tokens: Any, counts: Any) -> Texts:
    """Each row's first `counts[r]` generated `tokens` after the prompt `ids`, as text."""
    return [
        tokenizer.decode(list(ids) + [int(t) for t in row[: int(n)]])
        for row, n in zip(tokens, counts, strict=True)
    ]


def torch_lm(restored: Restored, device: str) -> Any:
    """The torchref LM holding `restored`'s weights on `device`, in eval mode."""
    import jax

    from torchref.convert import load_jaxml_params
    from torchref.models.lm import LM

    model = load_jaxml_params(LM(restored.config), jax.device_get(restored.params))
    return model.to(device).eval()


def sample_torch(
    restored: Restored,
    prompt: str,
    *,
    max_new_tokens: int,
    sampling: SamplingConfig = SAMPLE,
    num_samples: int = 1,
    seed: int = 0,
    device: str = "cpu",
) -> Texts:
    """`sample` with torchref's decoding loop on `device`; the noise is drawn by a torch
    generator seeded with `seed`."""
    import torch

    from torchref.decoding.sampling import exponential_noise
    from torchref.models.lm import generate

    ids = check_prompt(restored.tokenizer, prompt, max_new_tokens, restored.config.max_seq_len)
    shape = (max_new_tokens, num_samples, restored.config.vocab_size)
    generated = generate(
        torch_lm(restored, device),
        torch.tensor([ids] * num_samples, dtype=torch.long, device=device),
        torch.full((num_samples,), len(ids), dtype=torch.int32, device=device),
        max_new_tokens=max_new_tokens,
        sampling_config=sampling,
        noise=None
        if sampling.greedy
        else exponential_noise(shape, torch.Generator().manual_seed(seed)),
        eos_id=restored.eos_id,
    )
    return decode_rows(
        restored.tokenizer, ids, generated.tokens.cpu(), generated.num_generated.cpu()
    )


def speculative_sample(
    target: Restored,
    draft: Restored,
    prompt: str,
    *,
    draft_steps: int,
    max_new_tokens: int,
    sampling: SamplingConfig = SAMPLE,
    num_samples: int = 1,
    seed: int = 0,
) -> tuple[list[str], str]:
    """Like `sample` (a row ends at end-of-text), with `draft` proposing `draft_steps` tokens per
    round; also returns a line of statistics."""
    import jax
    import jax.numpy as jnp

    from jaxml.configs import SpeculativeConfig
    from jaxml.decoding.speculative import speculative_generate
    from jaxml.models.lm import LMStep, init_cache

    ids = target.tokenizer.encode(prompt).ids
    room = check_pair(target, draft, ids, max_new_tokens, draft_steps)
    tokens, num, stats = speculative_generate(
        LMStep(target.config),
        LMStep(draft.config),
        target.params,
        draft.params,
        init_cache(target.config, num_samples, room),
        init_cache(draft.config, num_samples, room),
        jnp.asarray([ids] * num_samples, jnp.int32),
        jnp.full((num_samples,), len(ids), jnp.int32),
        jax.random.split(jax.random.key(seed), num_samples),
        config=SpeculativeConfig(draft_steps=draft_steps, sampling=sampling),
        max_new_tokens=max_new_tokens,
        eos_id=target.eos_id,
    )
    texts = decode_rows(target.tokenizer, ids, np.asarray(tokens), np.asarray(num))
    return texts, stats_line(draft_steps, stats)


def stats_line(draft_steps: int, stats: Any) -> str:
    """One line from either backend's `SpeculativeStats`."""
    acceptance = float(np.mean(np.asarray(stats.acceptance_rate)))
    per_round = float(np.mean(np.asarray(stats.tokens_per_round)))
    return (
        f"speculative k={draft_steps}: acceptance {acceptance:.2f}, {per_round:.2f} tokens/round, "
        f"{int(stats.target_calls)} target calls, {int(stats.draft_calls)} draft calls"
    )


def speculative_sample_torch(
    target: Restored,
    draft: Restored,
    prompt: str,
    *,
    draft_steps: int,
    max_new_tokens: int,
    sampling: SamplingConfig = SAMPLE,
    num_samples: int = 1,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[Texts, str]:
    """`speculative_sample` with torchref's loop on `device`; row r's noise comes from
    `seeded_noise` with the r-th seed a torch generator seeded with `seed` draws."""
    import torch

    from jaxml.configs import SpeculativeConfig
    from torchref.decoding.speculative import RoundNoise, seeded_noise, speculative_generate
    from torchref.models.lm import init_cache

    ids = target.tokenizer.encode(prompt).ids
    room = check_pair(target, draft, ids, max_new_tokens, draft_steps)
    seeds = torch.randint(2**31, (num_samples,), generator=torch.Generator().manual_seed(seed))
    row_noise = seeded_noise(seeds.tolist(), draft_steps, target.config.vocab_size)

    def noise(round_index: int) -> RoundNoise:
        return RoundNoise(*(part.to(device) for part in row_noise(round_index)))

    def step_of(model: Any) -> Any:
        return lambda cache, tokens, positions, mask: model.step(tokens, positions, cache, mask)

    tokens, num, stats = speculative_generate(
        step_of(torch_lm(target, device)),
        step_of(torch_lm(draft, device)),
        init_cache(target.config, num_samples, room, device=device),
        init_cache(draft.config, num_samples, room, device=device),
        torch.tensor([ids] * num_samples, dtype=torch.long, device=device),
        torch.full((num_samples,), len(ids), dtype=torch.long, device=device),
        noise,
        config=SpeculativeConfig(draft_steps=draft_steps, sampling=sampling),
        max_new_tokens=max_new_tokens,
        eos_id=target.eos_id,
    )
    texts = decode_rows(target.tokenizer, ids, tokens.cpu(), num.cpu())
    return texts, stats_line(draft_steps, stats)


def check_pair(
    target: Restored,
    draft: Restored,
    ids: list[int],
    max_new_tokens: int,
    draft_steps: int,
) -> int:
    """The draft must speak the target's vocabulary and both must hold the run; -> cache length."""
    if not ids:
        raise ValueError("--prompt must not be empty")
    room = len(ids) + max_new_tokens + draft_steps
    for name, model in (("--ckpt", target), ("--draft-ckpt", draft)):
        if room > model.config.max_seq_len:
            raise ValueError(
                f"--max_new_tokens {max_new_tokens} does not fit {name}: the prompt has {len(ids)} "
                f"tokens, speculation needs --speculative-k = {draft_steps} more, "
                f"and max_seq_len is {model.config.max_seq_len}"
            )
    if draft.config.vocab_size != target.config.vocab_size:
        raise ValueError(
            f"--draft-ckpt vocab_size={draft.config.vocab_size} differs from --ckpt's "
            f"{target.config.vocab_size}: the draft must share the target's tokenizer"
        )
    if draft.tokenizer.get_vocab() != target.tokenizer.get_vocab():
        raise ValueError(
            "--draft-ckpt has another tokenizer than --ckpt: train both on the same data"
        )
    return room


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True, metavar="DIR", help="run or checkpoints directory")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top_k", "--top-k", type=int, default=None)
    p.add_argument("--top_p", "--top-p", type=float, default=None)
    p.add_argument("--min_p", "--min-p", type=float, default=None)
    p.add_argument("--greedy", action="store_true", help="argmax decoding (ignores sampling)")
    p.add_argument("--num_samples", "--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--draft-ckpt",
        "--draft_ckpt",
        metavar="DIR",
        default=None,
        help="a smaller LM on the same tokenizer: speculative decoding",
    )
    p.add_argument(
        "--speculative-k",
        "--speculative_k",
        type=int,
        default=None,
        help="draft tokens per round with --draft-ckpt (default 4)",
    )
    p.add_argument(
        "--backend", choices=BACKENDS, default="jax", help="decoding loop: jaxml's or torchref's"
    )
    p.add_argument(
        "--device", default=None, help="--backend torch only: cpu (default), cuda[:N], mps"
    )
    return p


def check_args(args: argparse.Namespace) -> None:
    if args.max_new_tokens < 1 or args.num_samples < 1:
        raise ValueError("--max_new_tokens and --num_samples must be positive integers")
    if not args.temperature > 0:
        raise ValueError(f"--temperature must be > 0, got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top_k must be a positive integer, got {args.top_k}")
    for name in ("top_p", "min_p"):
        value = getattr(args, name)
        if value is not None and not 0.0 < value <= 1.0:
            raise ValueError(f"--{name} must be in (0, 1], got {value}")
    if args.speculative_k is not None and args.draft_ckpt is None:
        raise ValueError("--speculative-k needs --draft-ckpt (the draft model)")
    if args.speculative_k is not None and args.speculative_k < 1:
        raise ValueError(f"--speculative-k must be a positive integer, got {args.speculative_k}")
    if args.device is not None and args.backend != "torch":
        raise ValueError(
            f"--device {args.device} needs --backend torch (jax samples on its default device)"
        )
    if args.backend == "torch":
        check_device(args.device or "cpu")


Job = tuple[argparse.Namespace, Restored, Restored | None]


def speculative_k(args: argparse.Namespace) -> int:
    return 4 if args.speculative_k is None else args.speculative_k


def prepare(argv: Sequence[str] | None) -> Job:
    args = build_parser().parse_args(argv)
    check_args(args)
    restored = load_checkpoint(args.ckpt, args.step)
    if args.draft_ckpt is None:
        check_prompt(
            restored.tokenizer, args.prompt, args.max_new_tokens, restored.config.max_seq_len
        )
        return args, restored, None
    draft = load_checkpoint(args.draft_ckpt)
    ids = restored.tokenizer.encode(args.prompt).ids
    check_pair(restored, draft, ids, args.max_new_tokens, speculative_k(args))
    return args, restored, draft


def execute(job: Job) -> None:
    args, restored, draft = job
    temperature = 0.0 if args.greedy else args.temperature
    settings = dict(
        max_new_tokens=args.max_new_tokens,
        sampling=SamplingConfig(temperature, args.top_k, args.top_p, args.min_p),
        num_samples=args.num_samples,
        seed=args.seed,
    )
    on_torch = args.backend == "torch"
    if on_torch:
        settings["device"] = args.device or "cpu"
    if draft is None:
        texts = (sample_torch if on_torch else sample)(restored, args.prompt, **settings)
    else:
        speculate = speculative_sample_torch if on_torch else speculative_sample
        k = speculative_k(args)
        texts, line = speculate(restored, draft, args.prompt, draft_steps=k, **settings)
        print(line, file=sys.stderr)
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i + 1}")
        print(text)


def run(argv: Sequence[str] | None = None) -> int:
    return cli_main(PROG, prepare, execute, argv)


if __name__ == "__main__":
    exit_process(run)
