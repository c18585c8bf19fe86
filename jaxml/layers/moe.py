"""Mixture of Experts with fixed-capacity dispatch (GShard / Switch), static shapes only.

Tokens `[batch, seq, embed_dim]` are flattened to `T = batch · seq` rows. The router (a bias-free
Dense `gate`, float32) gives `probs [T, E]`; each token picks its `topk` experts. Choices are
ranked choice-major — every token's first choice, in token order, before any second choice — and a
cumulative sum gives each choice its slot in its expert's buffer of `capacity` slots. Choices at
slot >= capacity overflow: dropped (zero output) or sent to the dense `overflow_expert`, which
runs on all `T` rows (static shape) and is weighted by each token's overflowed router weight, so
only overflowing tokens get its output or send it gradients.

Dispatch moves kept choices into `[E, capacity, embed_dim]` and back, two ways with the same
result: `gather` (default; the slots already give the sorted-by-expert order, so a slot -> token
index table replaces argsort: row gather in, batched expert matmuls, row gather out) or `einsum`
(GShard one-hot masks `[T, E, capacity]`, `tm,tec->ecm` / `ecm,tec->tm`, whose cost grows with
`T²` at a fixed capacity factor). Experts are stacked parameters
`w1 [E, embed_dim, latent]`, `w2 [E, latent, embed_dim]` (`w3` like `w1` for SwiGLU; `b1/b2/b3`
when `use_bias`) applied with batched einsums.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import Array

from jaxml.configs import FFNConfig
from jaxml.layers.ffn import ACTIVATION_FNS, make_ffn


class Routing(NamedTuple):
    """Per choice `[topk, T]` (choice-major): chosen expert, combine weight, slot, kept flag."""

    expert: Array  # int32
    weight: Array  # float32, renormalised over the selected experts when norm_topk_prob
    slot: Array  # int32 position in the expert's buffer (may be >= capacity)
    kept: Array  # bool, slot < capacity


def route(logits: Array, config: FFNConfig, capacity: int) -> tuple[Routing, dict[str, Array]]:
    """Top-k routing of `logits [T, E]` (float32) and the aux losses / statistics (see `MoE`)."""
    num_tokens, num_experts = logits.shape
    probs = jax.nn.softmax(logits, axis=-1)
    top_p, top_e = jax.lax.top_k(probs, config.topk)  # [T, k]
    if config.norm_topk_prob:
        top_p = top_p / jnp.sum(top_p, axis=-1, keepdims=True)
    expert = top_e.T  # [k, T]
    onehot = jax.nn.one_hot(expert, num_experts, dtype=jnp.int32)  # [k, T, E]
    position = jnp.cumsum(onehot.reshape(-1, num_experts), axis=0).reshape(onehot.shape) - 1
    slot = jnp.sum(position * onehot, axis=-1)  # [k, T]
    kept = slot < capacity
    routed = jnp.sum(onehot, axis=(0, 1)).astype(jnp.float32)  # choices per expert, pre-capacity
    load_balance = num_experts * jnp.sum(
        routed / (num_tokens * config.topk) * jnp.mean(probs, axis=0)
    )
    z_loss = jnp.mean(jax.nn.logsumexp(logits, axis=-1) ** 2)
    aux = {
        "aux_loss": config.alpha * load_balance + config.z_loss_coef * z_loss,
        "load_balance_loss": load_balance,
        "z_loss": z_loss,
        "tokens_per_expert": jnp.minimum(routed, capacity),
        "dropped_fraction": 1.0 - jnp.mean(kept.astype(jnp.float32)),
    }
    return Routing(expert, top_p.T, slot, kept), aux


def dispatch_einsum(
    x: Array, routing: Routing, num_experts: int, capacity: int
) -> tuple[Array, Array]:
    """One-hot dispatch: `x [T, M]` -> (`[E, C, M]` expert inputs, combine mask `[T, E, C]`)."""
    expert_mask = jax.nn.one_hot(routing.expert, num_experts, dtype=x.dtype)  # [k, T, E]
    slot_mask = jax.nn.one_hot(routing.slot, capacity, dtype=x.dtype)  # zero row when dropped
    dispatch = jnp.einsum("kte,ktc->tec", expert_mask, slot_mask)
    combine = jnp.einsum("kte,ktc,kt->tec", expert_mask, slot_mask, routing.weight.astype(x.dtype))
    return jnp.einsum("tm,tec->ecm", x, dispatch), combine


def combine_einsum(expert_out: Array, combine: Array) -> Array:
    """`[E, C, M]` expert outputs, `[T, E, C]` combine weights -> `[T, M]`."""
    return jnp.einsum("ecm,tec->tm", expert_out, combine)


def destinations(routing: Routing, num_experts: int, capacity: int) -> Array:
    """Flat slot index `expert · C + slot` of each choice, `E · C` (a spare row) when dropped."""
    dest = routing.expert * capacity + routing.slot
    return jnp.where(routing.kept, dest, num_experts * capacity)


def dispatch_gather(x: Array, dest: Array, num_experts: int, capacity: int) -> Array:
    """Index dispatch: `x [T, M]` -> `[E, C, M]`; empty slots read a zero row."""
    num_tokens = x.shape[0]
    tokens = jnp.broadcast_to(jnp.arange(num_tokens, dtype=jnp.int32), dest.shape)
    slot_token = jnp.full(num_experts * capacity + 1, num_tokens, jnp.int32)
    slot_token = slot_token.at[dest.reshape(-1)].set(tokens.reshape(-1))[:-1]
    padded = jnp.concatenate([x, jnp.zeros_like(x[:1])], axis=0)
    return padded[slot_token].reshape(num_experts, capacity, x.shape[-1])


def combine_gather(expert_out: Array, dest: Array, weight: Array) -> Array:
    """`[E, C, M]` expert outputs -> `[T, M]`: `Σ_k weight[k, t] · out[dest[k, t]]` (0 when dropped)."""
    flat = expert_out.reshape(-1, expert_out.shape[-1])
    padded = jnp.concatenate([flat, jnp.zeros_like(flat[:1])], axis=0)
    return jnp.einsum("kt,ktm->tm", weight.astype(flat.dtype), padded[dest])


def expert_ffn(x: Array, params: Mapping[str, Array], config: FFNConfig) -> Array:
    """All experts at once: `x [E, C, M]` -> `[E, C, M]` with stacked `w1`, `w2` (`w3`, biases)."""

    def dense(name: str, h: Array, spec: str) -> Array:
        out = jnp.einsum(spec, h, params[name])
        bias = params.get("b" + name[1:])
        return out if bias is None else out + bias[:, None, :]

    h = dense("w1", x, "ecm,emf->ecf")
    if config.kind == "swiglu":
        h = jax.nn.silu(h) * dense("w3", x, "ecm,emf->ecf")
    else:
        h = ACTIVATION_FNS[config.activation](h)
    return dense("w2", h, "ecf,efm->ecm")


class MoE(nn.Module):
    """`[..., embed_dim] -> ([..., embed_dim], aux)`; see the module docstring.

    `aux`: `aux_loss` (`alpha · load_balance_loss + z_loss_coef · z_loss`, what training adds),
    `load_balance_loss` (`E · Σ_e f_e · P_e`, f = fraction of token choices routed to e before
    capacity, P = mean router probability; 1 when balanced), `z_loss` (`mean(logsumexp(logits)²)`),
    `tokens_per_expert [E]` (choices kept), `dropped_fraction` (choices dropped or overflowed).
    """

    config: FFNConfig

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, dict[str, Array]]:
        cfg = self.config
        num_experts, embed, latent = cfg.num_experts, cfg.embed_dim, cfg.ffn_latent_dim
        tokens = x.reshape(-1, x.shape[-1])
        capacity = cfg.expert_capacity(tokens.shape[0])
        logits = nn.Dense(
            num_experts, use_bias=False, dtype=jnp.float32, param_dtype=jnp.float32, name="gate"
        )(tokens.astype(jnp.float32))
        routing, aux = route(logits, cfg, capacity)

        init = nn.initializers.lecun_normal(batch_axis=(0,))
        shapes = {"w1": (embed, latent), "w2": (latent, embed)}
        if cfg.kind == "swiglu":
            shapes["w3"] = (embed, latent)
        params = {n: self.param(n, init, (num_experts, *s), jnp.float32) for n, s in shapes.items()}
        if cfg.use_bias:
            for n, s in shapes.items():
                b = "b" + n[1:]
                params[b] = self.param(b, nn.initializers.zeros, (num_experts, s[1]), jnp.float32)

        if cfg.dispatch == "einsum":
            expert_in, combine = dispatch_einsum(tokens, routing, num_experts, capacity)
            y = combine_einsum(expert_ffn(expert_in, params, cfg), combine)
        else:
            dest = destinations(routing, num_experts, capacity)
            expert_in = dispatch_gather(tokens, dest, num_experts, capacity)
            weight = jnp.where(routing.kept, routing.weight, 0.0)
            y = combine_gather(expert_ffn(expert_in, params, cfg), dest, weight)
        if cfg.overflow_policy == "overflow_expert":
            overflow = jnp.sum(jnp.where(routing.kept, 0.0, routing.weight), axis=0)  # [T]
            dense = make_ffn(cfg, name="overflow_expert")(tokens)
            y = y + overflow[:, None].astype(dense.dtype) * dense
        return y.astype(x.dtype).reshape(x.shape), aux
