"""MoE step-time benchmark: `python -m experiments.bench_moe [--quick]` (also `experiments.bench moe`).

Forward+backward (gradients w.r.t. input and every parameter, aux loss included) of one MoE layer
on `[batch, seq, embed_dim]` tokens, top-1 and top-2 over 8, 16 and 64 SwiGLU experts at a fixed
capacity factor, against a dense SwiGLU FFN with the same active FLOPs per token
(`ffn_latent_dim · topk`), at two token counts. jaxml is timed jitted with both dispatch
implementations (index `gather`, the default, and one-hot `einsum` where its masks fit in memory);
torchref eagerly with `gather`.
The timings of one group (one token count and topk: the dense FFN and all expert counts) are
interleaved round by round and the fastest round is kept, so load from other processes hits them
alike; the ratios are what to read on a shared machine.

`--routing` instead trains a tiny model built from the layer and prints its routing statistics
(tokens per expert, dropped fraction, balance loss) for alpha 0, 0.01 and 0.1.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from experiments.flags import positive_int
from jaxml.configs import FFNConfig
from jaxml.layers.ffn import make_ffn
from jaxml.layers.moe import MoE
from torchref.convert import load_jaxml_params
from torchref.layers.ffn import make_ffn as torch_make_ffn
from torchref.layers.moe import MoE as TorchMoE

Row = dict[str, Any]


def interleaved_best(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Fastest of `repeats` rounds for each blocking `fn` (seconds), timed round-robin after one
    warm-up call each. The minimum, not the median: other processes' load only ever adds time."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def _jax_step(module: Any, params: Any, x: jax.Array) -> Callable[[], Any]:
    cotangent = jnp.asarray(np.random.default_rng(1).standard_normal(x.shape), jnp.float32)

    def loss(p: Any, x: jax.Array) -> jax.Array:
        out = module.apply(p, x)
        if isinstance(out, tuple):
            return jnp.sum(out[0] * cotangent) + out[1]["aux_loss"]
        return jnp.sum(out * cotangent)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return lambda: jax.block_until_ready(grad(params, x))


def _torch_step(module: torch.nn.Module, x: np.ndarray) -> Callable[[], Any]:
    tx = torch.from_numpy(x).requires_grad_(True)
    cotangent = torch.from_numpy(np.random.default_rng(1).standard_normal(x.shape)).float()

    def step() -> None:
        module.zero_grad(set_to_none=True)
        tx.grad = None
        out = module(tx)
        if isinstance(out, tuple):
            ((out[0] * cotangent).sum() + out[1]["aux_loss"]).backward()
        else:
            (out * cotangent).sum().backward()

    return step


# the dispatch masks [tokens, experts, capacity] are not built beyond this many elements (256 MB)
EINSUM_MAX_MASK = 1 << 26


def swiglu(embed_dim: int, latent: int, **moe: Any) -> FFNConfig:
    """Mixtral's FFN: bias-free SwiGLU; with `use_moe=True` (and routing `moe` fields) its
    top-k, renormalised sparse MoE block, otherwise the equal-FLOPs dense baseline."""
    return FFNConfig(embed_dim, latent, activation="silu", kind="swiglu", use_bias=False, **moe)


def moe_group(
    topk: int,
    experts: tuple[int, ...],
    *,
    batch: int,
    seq: int,
    embed_dim: int,
    latent: int,
    capacity_factor: float | None,
    repeats: int,
) -> list[Row]:
    """One row per expert count, all timed in the same interleaved rounds (ms, fastest round)."""
    dense_cfg = swiglu(embed_dim, latent * topk)
    tokens = batch * seq
    x = np.random.default_rng(0).standard_normal((batch, seq, embed_dim)).astype(np.float32)
    jx = jnp.asarray(x)
    dense_params = make_ffn(dense_cfg).init(jax.random.key(0), jx)
    fns = {
        "dense": _jax_step(make_ffn(dense_cfg), dense_params, jx),
        "torch_dense": _torch_step(load_jaxml_params(torch_make_ffn(dense_cfg), dense_params), x),
    }
    configs = {}
    for num_experts in experts:
        cfg = swiglu(
            embed_dim,
            latent,
            use_moe=True,
            num_experts=num_experts,
            topk=topk,
            capacity_factor=capacity_factor,
        )
        configs[num_experts] = cfg
        params = MoE(cfg).init(jax.random.key(0), jx)
        fns[f"gather{num_experts}"] = _jax_step(MoE(cfg), params, jx)
        fns[f"torch{num_experts}"] = _torch_step(load_jaxml_params(TorchMoE(cfg), params), x)
        if tokens * num_experts * cfg.expert_capacity(tokens) <= EINSUM_MAX_MASK:
            one_hot = MoE(cfg.replace(dispatch="einsum"))
            fns[f"einsum{num_experts}"] = _jax_step(one_hot, params, jx)
    ms = {name: 1e3 * s for name, s in interleaved_best(fns, repeats).items()}
    factor = "dropless" if capacity_factor is None else f"cf{capacity_factor:g}"
    rows = []
    for num_experts, cfg in configs.items():
        gather, torch_ms = ms[f"gather{num_experts}"], ms[f"torch{num_experts}"]
        einsum = ms.get(f"einsum{num_experts}", float("nan"))
        rows.append(
            {
                "case": f"t{tokens} top{topk} e{num_experts} {factor}",
                "capacity": cfg.expert_capacity(tokens),
                "dense_ms": ms["dense"],
                "gather_ms": gather,
                "einsum_ms": einsum,
                "gather/dense": gather / ms["dense"],
                "einsum/dense": einsum / ms["dense"],
                f"gather/e{experts[0]}": gather / ms[f"gather{experts[0]}"],
                "torch_dense_ms": ms["torch_dense"],
                "torch_ms": torch_ms,
                "torch/torch_dense": torch_ms / ms["torch_dense"],
                "jax/torch": gather / torch_ms,
            }
        )
    return rows


def run_benchmark(
    quick: bool = False, repeats: int = 5, torch_threads: int | None = None
) -> list[Row]:
    """Rows for top-1/top-2 × 8/16/64 experts at capacity factor 1 for each token count, with
    `gather/e8` the cost of going from 8 experts to E at the same topk; full mode adds a dropless
    top-2/8 row (capacity = tokens, so every expert computes a slot per token)."""
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    base = dict(embed_dim=128, latent=256) if quick else dict(embed_dim=256, latent=512)
    token_shapes = [(4, 128)] if quick else [(8, 256), (32, 256)]
    rows = []
    for batch, seq in token_shapes:
        for topk in (1, 2):
            rows += moe_group(
                topk,
                (8, 16, 64),
                capacity_factor=1.0,
                repeats=repeats,
                batch=batch,
                seq=seq,
                **base,
            )
    if not quick:
        rows += moe_group(2, (8,), capacity_factor=None, repeats=repeats, batch=8, seq=256, **base)
    return rows


class TinyMoERegressor(nn.Module):
    """`[batch, seq, features] -> [batch, seq]`: Dense embed, residual LayerNorm -> MoE, Dense head."""

    config: FFNConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        h = nn.Dense(self.config.embed_dim, name="embed")(x)
        y, aux = MoE(self.config, name="moe")(nn.LayerNorm(name="norm")(h))
        return nn.Dense(1, name="head")(h + y)[..., 0], aux


def routing_run(alpha: float, steps: int = 600, log_every: int = 200, seed: int = 0) -> list[Row]:
    """Train `TinyMoERegressor` (top-2 of 8 ReLU experts, capacity factor 1) with Adam on a
    piecewise target and report the routing statistics the layer returns, every `log_every` steps.
    """
    cfg = FFNConfig(32, 64, use_moe=True, num_experts=8, topk=2, capacity_factor=1.0, alpha=alpha)
    model = TinyMoERegressor(cfg)
    rng = np.random.default_rng(seed)

    def batch() -> tuple[jax.Array, jax.Array]:
        x = rng.standard_normal((16, 32, 8)).astype(np.float32)
        y = np.where(x[..., 0] > 0, np.sin(3 * x[..., 1]), x[..., 2] * x[..., 3])
        return jnp.asarray(x), jnp.asarray(y.astype(np.float32))

    params = model.init(jax.random.key(seed), batch()[0])
    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params: Any, opt_state: Any, x: jax.Array, y: jax.Array) -> Any:
        def loss_fn(p: Any) -> Any:
            pred, aux = model.apply(p, x)
            task = jnp.mean((pred - y) ** 2)
            return task + aux["aux_loss"], (task, aux)

        grads, (task, aux) = jax.grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, task, aux

    rows = []
    for i in range(steps + 1):
        params, opt_state, task, aux = step(params, opt_state, *batch())
        if i % log_every == 0:
            load = np.asarray(aux["tokens_per_expert"])
            rows.append(
                {
                    "alpha": alpha,
                    "step": i,
                    "task_loss": float(task),
                    "balance_loss": float(aux["load_balance_loss"]),
                    "dropped": float(aux["dropped_fraction"]),
                    "tokens_per_expert": " ".join(str(int(n)) for n in load),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> list[Row]:
    from experiments.bench import format_table

    parser = argparse.ArgumentParser(
        prog="python -m experiments.bench_moe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed rounds per case")
    parser.add_argument(
        "--torch-threads",
        type=positive_int,
        default=None,
        help="torch intra-op threads (default: torch's own; 1 avoids OpenMP spin-waits on a busy machine)",
    )
    parser.add_argument(
        "--routing",
        action="store_true",
        help="instead: routing statistics of a short training run of a tiny MoE model, alpha 0, 0.01 and 0.1",
    )
    args = parser.parse_args(argv)
    if args.routing:
        rows = [row for alpha in (0.0, 0.01, 0.1) for row in routing_run(alpha)]
        print(format_table("moe routing", rows), flush=True)
        return rows
    rows = run_benchmark(quick=args.quick, repeats=args.repeats, torch_threads=args.torch_threads)
    print(format_table("moe", rows), flush=True)
    return rows


if __name__ == "__main__":
    main()
