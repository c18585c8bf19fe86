"""Speculative vs target-only cached decoding: wall-clock tokens/s, acceptance, tokens per round.

    python -m experiments.bench speculative [--quick]

The pair comes from `train_sota` checkpoints named by the environment variables
`SPECULATIVE_TARGET` and `SPECULATIVE_DRAFT` (run or checkpoint directories, same tokenizer);
without them the bench builds an untrained 8-layer target and 2-layer draft and says so in every
row (untrained LMs have near-uniform outputs, so their acceptance rate means little).

For batch 1 and 8 and k = 2, 4, 8 it times, interleaved round by round on this shared machine:
the target alone through the decode loop (`jaxml.decoding.loop.decode`, one cached step per
token) and `speculative_generate`, both jitted, sampling at temperature 1 with no EOS, so every row
generates `max_new_tokens`. Each row also gives what limits the speedup: the draft/target cost
ratio of one cached step, the acceptance rate, the tokens per round, and the speedup the round
model predicts, `tokens_per_round · t_target / (t_score + (k + 1) · t_draft)`, where `t_score` is
one target call on k + 1 tokens; the gap to the measured speedup is the per-round overhead.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxml.configs import SamplingConfig, SpeculativeConfig
from jaxml.configs.lm import LMConfig
from jaxml.decoding import sampling
from jaxml.decoding.loop import decode
from jaxml.decoding.speculative import speculative_generate
from jaxml.layers import kv_cache
from jaxml.models.lm import LM, LMStep, init_cache

Row = dict[str, Any]
SAMPLING = SamplingConfig(temperature=1.0)


@dataclass(frozen=True)
class Model:
    config: LMConfig
    params: Any

    @property
    def step(self) -> LMStep:
        return LMStep(self.config)


def load_pair() -> tuple[Model, Model, str, np.ndarray]:
    """(target, draft, description, prompt token ids)."""
    target_dir, draft_dir = (
        os.environ.get("SPECULATIVE_TARGET"),
        os.environ.get("SPECULATIVE_DRAFT"),
    )
    if target_dir and draft_dir:
        from experiments.generate import load_checkpoint

        target, draft = load_checkpoint(target_dir), load_checkpoint(draft_dir)
        ids = target.tokenizer.encode("The if statement is used for conditional execution").ids
        shape = lambda c: f"L{c.num_layers}d{c.embed_dim}"  # noqa: E731
        pair = f"trained {shape(target.config)}/{shape(draft.config)}"
        return (
            Model(target.config, target.params),
            Model(draft.config, draft.params),
            pair,
            np.array(ids),
        )
    base = LMConfig(
        vocab_size=2048, embed_dim=256, num_layers=8, num_heads=8, num_groups=2, max_seq_len=512
    )
    models = []
    for seed, layers in ((0, 8), (1, 2)):
        config = base.replace(num_layers=layers)
        params = LM(config).init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))["params"]
        models.append(Model(config, params))
    return models[0], models[1], "untrained L8d256/L2d256", np.arange(16) % 2048


def interleaved_medians(runs: dict[Any, Callable[[], Any]], repeats: int) -> dict[Any, float]:
    """Median seconds of each run (compiled and warm), timed round-robin: on a shared machine
    a burst of load then hits every contender alike."""
    for run in runs.values():
        jax.block_until_ready(run())
    times: dict[Any, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            jax.block_until_ready(run())
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def step_call(model: Model, batch: int, tokens: int) -> Callable[[], Any]:
    """One jitted cached model call on `tokens` new tokens after a half-full cache (64 tokens
    of 128, or less for a model with a shorter `max_seq_len`)."""
    length = min(128, model.config.max_seq_len)
    cache = init_cache(model.config, batch, length)
    cache = tuple(kv_cache.append(c, c.k[:, : length // 2], c.v[:, : length // 2]) for c in cache)
    layer = cache[0]
    positions = kv_cache.next_positions(layer, tokens)
    mask = kv_cache.attention_mask(layer, tokens)
    ids = jnp.zeros((batch, tokens), jnp.int32)
    call = jax.jit(model.step)
    return lambda: call(model.params, cache, ids, positions, mask)[0]


def target_only_run(target: Model, prompt: jax.Array, max_new: int) -> Callable[[], Any]:
    """The target alone through the decode loop: prefill, then one cached step per token."""
    batch, width = prompt.shape
    lengths = jnp.full((batch,), width, jnp.int32)

    @jax.jit
    def run(params: Any, key: jax.Array) -> jax.Array:
        cache = init_cache(target.config, batch, width + max_new)
        select = sampling.sampler(SAMPLING)
        return decode(
            target.step, params, cache, prompt, lengths, steps=max_new, select=select, key=key
        ).outputs

    return lambda: run(target.params, jax.random.key(0))


def speculative_run(
    target: Model, draft: Model, prompt: jax.Array, max_new: int, k: int
) -> Callable[[], Any]:
    batch, width = prompt.shape
    lengths = jnp.full((batch,), width, jnp.int32)
    keys = jax.random.split(jax.random.key(0), batch)
    config = SpeculativeConfig(draft_steps=k, sampling=SAMPLING)
    room = width + max_new + k

    def run() -> Any:
        return speculative_generate(
            target.step,
            draft.step,
            target.params,
            draft.params,
            init_cache(target.config, batch, room),
            init_cache(draft.config, batch, room),
            prompt,
            lengths,
            keys,
            config=config,
            max_new_tokens=max_new,
        )

    return run


def bench_batch(
    target: Model,
    draft: Model,
    pair: str,
    prompt: jax.Array,
    max_new: int,
    ks: tuple[int, ...],
    repeats: int,
) -> list[Row]:
    batch = prompt.shape[0]
    runs: dict[Any, Callable[[], Any]] = {"target": target_only_run(target, prompt, max_new)}
    runs.update({k: speculative_run(target, draft, prompt, max_new, k) for k in ks})
    stats = {k: jax.block_until_ready(runs[k]())[2] for k in ks}
    runs.update({"t1": step_call(target, batch, 1), "d1": step_call(draft, batch, 1)})
    runs.update({("score", k): step_call(target, batch, k + 1) for k in ks})
    seconds = interleaved_medians(runs, repeats)
    base, t_target, t_draft = seconds["target"], seconds["t1"], seconds["d1"]
    tokens = batch * max_new
    rows: list[Row] = [
        {
            "case": f"{pair} b{batch} target only",
            "tok_s": tokens / base,
            "speedup": 1.0,
            "draft/target step": t_draft / t_target,
        }
    ]
    for k in ks:
        t_score = seconds[("score", k)]
        per_round = float(np.mean(stats[k].tokens_per_round))
        rows.append(
            {
                "case": f"{pair} b{batch} k={k}",
                "tok_s": tokens / seconds[k],
                "speedup": base / seconds[k],
                "acceptance": float(np.mean(stats[k].acceptance_rate)),
                "tokens/round": per_round,
                "predicted": per_round * t_target / (t_score + (k + 1) * t_draft),
                "draft/target step": t_draft / t_target,
                "score/target step": t_score / t_target,
            }
        )
    return rows


def verification_cost(quick: bool) -> list[Row]:
    """What one target call on k + 1 = 5 tokens costs against one on 1 token, by model width.

    Speculation pays when scoring k + 1 tokens costs about one step (a memory-bound model);
    on a CPU a small model is compute-bound and the cost grows with the tokens scored.
    """
    rows = []
    for width in (256,) if quick else (256, 512, 1024):
        config = LMConfig(vocab_size=2048, embed_dim=width, num_layers=8, num_heads=8, num_groups=2)
        params = LM(config).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
        model = Model(config, params)
        seconds = interleaved_medians({1: step_call(model, 1, 1), 5: step_call(model, 1, 5)}, 7)
        rows.append(
            {
                "case": f"untrained L8 d{width} b1: 5-token call / 1-token call",
                "score/target step": seconds[5] / seconds[1],
                "ms": seconds[1] * 1e3,
            }
        )
    return rows


def run_benchmark(quick: bool = False) -> list[Row]:
    target, draft, pair, prompt_ids = load_pair()
    max_new, repeats = (32, 3) if quick else (128, 5)
    ks = (2, 4) if quick else (2, 4, 8)
    fits = min(target.config.max_seq_len, draft.config.max_seq_len) - len(prompt_ids) - max(ks)
    max_new = min(max_new, fits)  # trained models hold only their training sequence length
    rows: list[Row] = []
    for batch in (1,) if quick else (1, 8):
        prompt = jnp.asarray(np.tile(prompt_ids, (batch, 1)), jnp.int32)
        rows += bench_batch(target, draft, pair, prompt, max_new, ks, repeats)
    return rows + verification_cost(quick)
