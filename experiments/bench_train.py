"""`experiments.bench train`: one full AdamW training step of the LM, jaxml vs torchref.

Contenders run the same config on the same batch (`batch` × `seq` tokens, next-token
cross-entropy + MoE aux loss, AdamW lr 1e-3, weight decay 0.1), starting from the same weights:
- `jax`: `jax.jit` of loss + grad + `optax.adamw` update, params and optimizer state donated;
- `torch`: torchref eager, `torch.optim.AdamW` (foreach);
- `compile`: the same with the model + loss under `torch.compile` (optimizer eager).
Timing is interleaved: each round runs `steps` steps of every contender in turn, and the table
gives the median over rounds of the per-step time, so load from other processes on a shared
machine hits all contenders alike. MFU counts the useful matmul FLOPs of a causal step,
`6 · N · tokens + 6 · layers · seq · embed_dim · tokens` (N = matmul params incl. the output
projection, excl. the embedding lookup; attention counted for the causal half only), against the
measured float32 matmul peak (`matmul_peak`).

On a shared machine, give both frameworks the same core for a fair ratio (XLA sizes its thread
pool from the CPU affinity; `XLA_FLAGS` thread settings do not stop it using every core):
`OMP_NUM_THREADS=1 taskset -c 1 python -m experiments.bench_train`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F

from jaxml.configs import LMConfig
from jaxml.models.lm import LM

LR, WEIGHT_DECAY = 1e-3, 0.1
SIZES = {  # name: (LMConfig fields, batch, seq)
    "5M": (dict(vocab_size=4096, embed_dim=256, num_layers=4, num_heads=8, num_groups=4), 8, 256),
    "27M": (dict(vocab_size=4096, embed_dim=512, num_layers=8, num_heads=8, num_groups=4), 8, 256),
}
QUICK = {"quick": (dict(vocab_size=512, embed_dim=64, num_layers=2, num_heads=4), 2, 128)}


def train_flops(config: LMConfig, params: Any, tokens: int, seq: int) -> float:
    """Useful matmul FLOPs of one training step (forward + backward = 3 × forward)."""
    total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    matmul = total - config.vocab_size * config.embed_dim  # the lookup is not a matmul
    if config.tie_embeddings:
        matmul += config.vocab_size * config.embed_dim  # ... but the tied head is
    norms = (2 * config.num_layers + 1) * config.embed_dim
    attention = config.num_layers * seq * config.embed_dim  # causal half of q·k and p·v
    return 6.0 * tokens * (matmul - norms + attention)


def jax_step(config: LMConfig) -> Callable[..., Any]:
    model, tx = LM(config), optax.adamw(LR, weight_decay=WEIGHT_DECAY)

    def loss_fn(params: Any, ids: jax.Array, targets: jax.Array) -> jax.Array:
        logits, aux = model.apply({"params": params}, ids)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        return jnp.mean(ce) + aux["aux_loss"]

    def step(params: Any, opt_state: Any, ids: jax.Array, targets: jax.Array) -> Any:
        loss, grads = jax.value_and_grad(loss_fn)(params, ids, targets)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


class TorchLoss(torch.nn.Module):
    """torchref LM + next-token cross-entropy + aux loss (the unit `torch.compile` compiles)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, aux = self.model(ids)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten()) + aux["aux_loss"]


def torch_step(
    loss_module: Callable[..., torch.Tensor], params: Any, ids: torch.Tensor, targets: torch.Tensor
) -> Callable[[], torch.Tensor]:
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY, foreach=True)

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = loss_module(ids, targets)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def case(name: str, fields: dict[str, Any], batch: int, seq: int, args: argparse.Namespace) -> Any:
    from experiments.bench import peak_gflops
    from torchref.convert import load_jaxml_params
    from torchref.models.lm import LM as TorchLM

    config = LMConfig(max_seq_len=seq, **fields, **getattr(args, "lm_overrides", {}))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, config.vocab_size, (batch, seq + 1)).astype(np.int32)
    ids, targets = tokens[:, :-1], tokens[:, 1:]
    params = jax.jit(LM(config).init)(jax.random.key(0), jnp.asarray(ids))["params"]
    flops = train_flops(config, params, batch * seq, seq)

    step = jax_step(config)
    state = [params, optax.adamw(LR, weight_decay=WEIGHT_DECAY).init(params)]
    jids, jtargets = jnp.asarray(ids), jnp.asarray(targets)

    def run_jax() -> None:
        state[0], state[1], loss = step(state[0], state[1], jids, jtargets)
        loss.block_until_ready()

    t_ids, t_targets = torch.from_numpy(ids).long(), torch.from_numpy(targets).long()
    contenders: dict[str, Callable[[], Any]] = {"jax": run_jax}
    eager = load_jaxml_params(TorchLM(config), params)
    contenders["torch"] = torch_step(TorchLoss(eager), eager.parameters(), t_ids, t_targets)
    if not args.no_compile:
        model = load_jaxml_params(TorchLM(config), params)
        compiled = torch.compile(TorchLoss(model))
        contenders["compile"] = torch_step(compiled, model.parameters(), t_ids, t_targets)
    compile_s = {}
    for key, fn in list(contenders.items()):
        start = time.perf_counter()
        try:
            fn(), fn()  # compile / warm up
        except Exception as error:  # inductor needs a C++ toolchain; report n/a without it
            print(f"{key} unavailable: {type(error).__name__}: {error}")
            del contenders[key]
            continue
        compile_s[key] = time.perf_counter() - start

    times: dict[str, list[float]] = {key: [] for key in contenders}
    for _ in range(args.rounds):
        for key, fn in contenders.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                fn()
            times[key].append((time.perf_counter() - start) / args.steps)
    median = {key: statistics.median(ts) for key, ts in times.items()}
    peak = peak_gflops(args) * 1e9
    row: dict[str, Any] = {
        "case": f"{name} d{config.embed_dim} L{config.num_layers} b{batch} t{seq}",
        "params_M": sum(x.size for x in jax.tree.leaves(params)) / 1e6,
    }
    for key, seconds in median.items():
        row[f"{key}_ms"] = seconds * 1e3
    for key, seconds in median.items():
        row[f"{key}_tok/s"] = batch * seq / seconds
    if "torch" in median:
        row["jax_vs_eager"] = median["torch"] / median["jax"]  # > 1: jaxml faster
    if "compile" in median:
        row["jax_vs_compile"] = median["compile"] / median["jax"]
    for key, seconds in median.items():
        row[f"{key}_mfu"] = flops / seconds / peak
    row["peak_gflops"] = peak / 1e9
    row["jax_compile_s"] = compile_s["jax"]
    return row


def run_benchmark(args: argparse.Namespace) -> list[dict[str, Any]]:
    sizes = QUICK if args.quick else SIZES
    chosen = getattr(args, "sizes", None) or list(sizes)
    return [case(name, *sizes[name], args) for name in chosen]


def main(argv: list[str] | None = None) -> None:
    from experiments.bench import format_table

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="*", choices=list(SIZES), help="default: all")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="steps per contender per round")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args(argv)
    print(format_table("train", run_benchmark(args)), flush=True)


if __name__ == "__main__":
    main()
