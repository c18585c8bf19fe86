"""Decode-speed benchmark: `python -m experiments.bench decode [--quick]` (and `bandwidth`).

The autoregressive transformer (continuous values; d 256, 8 heads, 4 layers, FFN 1024, float32)
generates `STEPS` positions after a cache filled to `context - STEPS`, at batch 1 and 8 and context
128 and 1024 (the cache holds `context` slots; a step attends over all of them). Contenders, timed
round-robin in the same rounds (the machine is shared; medians are quoted):
- `jax` mha / gqa (2 groups) / mqa: one jitted `jaxml.decoding.loop.decode` (prefill of the first
  token, then `lax.scan`), `STEPS` one-token model calls;
- `recompute` (mha): `predict_autoregressively_recompute`, a full forward pass over the whole
  `context`-long buffer per new position;
- `torch` (mha): `torchref.decoding.loop.decode`, the eager Python loop over the torchref twin
  (its functional cache copies the buffers at every append), with torch's default thread count,
  and `torch_1t` with one thread: on a loaded 2-core machine torch's OpenMP regions (its CPU SDPA
  kernel above all) stall waiting for a descheduled thread, and one thread was ~10x faster.
  `vs_torch` compares with the faster of the two.
Per contender: ms per generated position, tokens/s (`batch / step time`), and for the cached jax
loops the bytes a step must read (weights + the whole K/V cache) over the step time, against the
machine's measured copy bandwidth (`bandwidth`: numpy copy of 256 MB, read + write bytes).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

from jaxml.configs import TransformerConfig
from jaxml.decoding import loop
from jaxml.models.generation import predict_autoregressively_recompute
from jaxml.models.transformer import AutoregressiveTransformerModel, init_cache
from torchref.convert import load_jaxml_params
from torchref.decoding import loop as torch_loop
from torchref.models import transformer as torch_transformer

Row = dict[str, Any]
STEPS, RECOMPUTE_STEPS = 32, 4
DIMS = {"embed_dim": 256, "num_heads": 8, "num_layers": 4, "ffn_latent_dim": 1024}
FEATURES = 16  # input_dim = output_dim

_BANDWIDTH: dict[str, float] = {}


def copy_bandwidth(size_mb: int = 256, repeats: int = 7) -> float:
    """GB/s of a numpy copy between two preallocated `size_mb` arrays (read + write bytes)."""
    if "gbps" not in _BANDWIDTH:
        src = np.ones(size_mb * 2**20 // 4, np.float32)
        dst = np.empty_like(src)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            np.copyto(dst, src)
            times.append(time.perf_counter() - start)
        _BANDWIDTH["gbps"] = 2 * src.nbytes / statistics.median(times) / 1e9
    return _BANDWIDTH["gbps"]


def bandwidth_rows() -> list[Row]:
    gbps = copy_bandwidth()
    return [{"case": "numpy copy 256 MB (read + write)", "gb_per_s": gbps}]


def interleaved_medians(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median seconds of each blocking `fn`, after one warm-up call each, timed round-robin."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _config(attention_type: str, context: int) -> TransformerConfig:
    groups = 2 if attention_type == "gqa" else None
    return TransformerConfig(
        input_dim=FEATURES,
        output_dim=FEATURES,
        embed_dim=DIMS["embed_dim"],
        num_heads=DIMS["num_heads"],
        num_layers=DIMS["num_layers"],
        ffn_latent_dim=DIMS["ffn_latent_dim"],
        attention_type=attention_type,
        num_groups=groups,
        max_seq_len=context,
    )


def _feed_back(outputs: jax.Array, key: jax.Array) -> jax.Array:
    return outputs


def _jax_cached(model: Any, params: Any, x: np.ndarray, context: int) -> Callable[[], Any]:
    """`STEPS` one-token calls after a cache prefilled with `context - STEPS` positions."""
    batch = x.shape[0]

    def step(p: Any, cache: Any, xs: jax.Array, positions: jax.Array, mask: jax.Array) -> Any:
        return model.apply(
            {"params": p},
            xs,
            positions,
            mask,
            cache,
            method=AutoregressiveTransformerModel.decode_step,
        )

    cache = init_cache(model.config, model.config.num_layers, batch, context)
    prefill = jax.jit(lambda p, c, xs: loop.run_step(step, p, c, xs)[1])
    cache = prefill(params, cache, jnp.asarray(x[:, : context - STEPS]))
    ones = jnp.ones((batch,), jnp.int32)
    run = jax.jit(
        lambda p, c, x0: (
            loop.decode(
                step, p, c, x0, ones, steps=STEPS, select=_feed_back, key=jax.random.key(0)
            ).outputs
        )
    )
    first = jnp.asarray(x[:, context - STEPS : context - STEPS + 1])
    return lambda: run(params, cache, first).block_until_ready()


def _recompute(model: Any, params: Any, prefix: jax.Array) -> Callable[[], Any]:
    """`RECOMPUTE_STEPS` full forward passes over the `context`-long buffer."""
    return lambda: predict_autoregressively_recompute(
        model, params, prefix, RECOMPUTE_STEPS
    ).block_until_ready()


def _torch_cached(model: Any, x: np.ndarray, context: int) -> Callable[[], Any]:
    batch = x.shape[0]
    tx = torch.from_numpy(x)

    def step(cache: Any, xs: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> Any:
        return model.decode_step(xs, positions, mask, cache)

    cache = torch_transformer.init_cache(model.config, model.config.num_layers, batch, context)
    with torch.no_grad():
        cache = torch_loop.run_step(step, cache, tx[:, : context - STEPS])[1]
    ones = torch.ones(batch, dtype=torch.int32)
    first = tx[:, context - STEPS : context - STEPS + 1]
    return lambda: torch_loop.decode(
        step, cache, first, ones, steps=STEPS, select=lambda out, i: out
    )


def _one_thread(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(threads)

    return run


def decode_group(batch: int, context: int, rounds: int, with_torch: bool) -> list[Row]:
    x = np.random.default_rng(0).standard_normal((batch, context, FEATURES))
    x = x.astype(np.float32)
    fns: dict[str, Callable[[], Any]] = {}
    cache_bytes: dict[str, int] = {}
    weight_bytes: dict[str, int] = {}
    for kind in ("mha", "gqa", "mqa"):
        model = AutoregressiveTransformerModel(_config(kind, context))
        params = model.init(jax.random.key(0), x[:, :8])["params"]
        fns[kind] = _jax_cached(model, params, x, context)
        weight_bytes[kind] = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(params))
        cache = init_cache(model.config, model.config.num_layers, batch, context)
        cache_bytes[kind] = sum(c.k.nbytes + c.v.nbytes for c in cache)
        if kind == "mha":
            prefix = jnp.asarray(x[:, : context - RECOMPUTE_STEPS + 1])
            fns["recompute"] = _recompute(model, params, prefix)
            if with_torch:
                torch_model = load_jaxml_params(
                    torch_transformer.AutoregressiveTransformerModel(model.config), params
                )
                fns["torch"] = _torch_cached(torch_model, x, context)
                fns["torch_1t"] = _one_thread(fns["torch"])
    seconds = interleaved_medians(fns, rounds)
    per_token = {
        name: t / (RECOMPUTE_STEPS if name == "recompute" else STEPS) for name, t in seconds.items()
    }
    copy = copy_bandwidth()
    rows = []
    for name, step_s in per_token.items():
        row: Row = {
            "case": f"b{batch} ctx{context} {name}",
            "ms_per_step": 1e3 * step_s,
            "tokens_per_s": batch / step_s,
            "vs_recompute": per_token["recompute"] / step_s,
            "cache_mb": float("nan"),
            "gb_per_s": float("nan"),
            "of_copy_bw": float("nan"),
        }
        if name in ("mha", "gqa", "mqa"):
            row["cache_mb"] = cache_bytes[name] / 2**20
            row["gb_per_s"] = (weight_bytes[name] + cache_bytes[name]) / step_s / 1e9
            row["of_copy_bw"] = row["gb_per_s"] / copy
        if "torch" in per_token:
            row["vs_torch"] = min(per_token["torch"], per_token["torch_1t"]) / step_s
        rows.append(row)
    return rows


def run_benchmark(quick: bool = False, rounds: int = 5) -> list[Row]:
    """Rows per (batch, context) group; torchref's loop at batch 1 (and 8 unless quick)."""
    copy_bandwidth()
    groups = [(1, 128)] if quick else [(1, 128), (1, 1024), (8, 128), (8, 1024)]
    rows = []
    for batch, context in groups:
        rows += decode_group(batch, context, rounds, with_torch=True)
    return rows
