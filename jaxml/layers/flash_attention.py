"""Causal self-attention computed by query blocks, with a recomputing `jax.custom_vjp` backward.

Same math as `dot_product_attention(q, k, v, causal_mask)`, organised for speed:
- query block i only meets key blocks 0..i (the fully masked blocks above the diagonal are never
  computed: about half the FLOPs of a dense causal attention at long lengths);
- the forward pass keeps only the output and the row log-sum-exp `lse` (`[batch, seq, heads]`);
  the backward pass recomputes each block's probabilities from `lse` instead of storing the
  `[seq, seq]` matrices (the FlashAttention recipe, Dao et al. 2022, written with plain einsums).
Block loops are Python loops over static slices, so everything is one jit-compiled graph.
Shapes as in `attention.py`: q `[batch, seq, num_heads, head_dim]`, k/v `[batch, seq, num_kv_heads, head_dim]`.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

BLOCK_SIZES = (64, 32)  # preferred first; measured with `python -m experiments.bench attention`


def pick_block_size(q_len: int, kv_len: int) -> int | None:
    """A block size for square causal attention of at least two whole blocks, else None."""
    for block_size in BLOCK_SIZES:
        if q_len == kv_len and q_len % block_size == 0 and q_len >= 2 * block_size:
            return block_size
    return None


def _grouped(q: Array, num_kv_heads: int) -> Array:
    batch, seq, heads, dim = q.shape
    return q.reshape(batch, seq, num_kv_heads, heads // num_kv_heads, dim)


def _block_scores(qb: Array, kb: Array, diagonal: int | None) -> Array:
    """Scores `[batch, groups, per_group, block, keys]`; the last key block is masked when `diagonal`."""
    acc = jnp.promote_types(qb.dtype, jnp.float32)  # float32, or float64 for float64 inputs
    scores = jnp.einsum("btgrd,bsgd->bgrts", qb, kb, preferred_element_type=acc)
    if diagonal is not None:
        t, s = scores.shape[-2:]
        allowed = jnp.arange(s)[None, :] <= (s - t + jnp.arange(t))[:, None]
        scores = jnp.where(allowed, scores, jnp.finfo(acc).min)
    return scores


def _forward(q: Array, k: Array, v: Array, block_size: int) -> tuple[Array, Array]:
    batch, seq, heads, dim = q.shape
    qg = _grouped(q * (1.0 / np.sqrt(dim)).astype(q.dtype), k.shape[2])
    outs, lses = [], []
    for start in range(0, seq, block_size):
        end = start + block_size
        scores = _block_scores(qg[:, start:end], k[:, :end], diagonal=start)
        row_max = jnp.max(scores, axis=-1, keepdims=True)
        probs = jnp.exp(scores - row_max)
        row_sum = jnp.sum(probs, axis=-1, keepdims=True)
        out = jnp.einsum("bgrts,bsgd->btgrd", (probs / row_sum).astype(v.dtype), v[:, :end])
        outs.append(out)
        lses.append((row_max + jnp.log(row_sum))[..., 0])  # [batch, groups, per_group, block]
    out = jnp.concatenate(outs, axis=1).reshape(q.shape)
    return out, jnp.concatenate(lses, axis=-1)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def causal_attention(q: Array, k: Array, v: Array, block_size: int = 64) -> Array:
    """Causal softmax attention `[batch, seq, num_heads, head_dim]`; see the module docstring."""
    return _forward(q, k, v, block_size)[0]


def _causal_attention_fwd(
    q: Array, k: Array, v: Array, block_size: int
) -> tuple[Array, tuple[Array, ...]]:
    out, lse = _forward(q, k, v, block_size)
    return out, (q, k, v, out, lse)  # residuals: inputs, output and lse; no [seq, seq] tensor


def _causal_attention_bwd(
    block_size: int, residuals: tuple[Array, ...], d_out: Array
) -> tuple[Array, Array, Array]:
    q, k, v, out, lse = residuals
    batch, seq, heads, dim = q.shape
    groups = k.shape[2]
    acc = jnp.promote_types(q.dtype, jnp.float32)
    scale = (1.0 / np.sqrt(dim)).astype(acc)
    qg = _grouped(q * scale.astype(q.dtype), groups)
    dog = _grouped(d_out, groups)
    # D_i = sum_j P_ij dP_ij = rowsum(dO_i * O_i), the softmax backward's correction term.
    delta = jnp.einsum("btgrd,btgrd->bgrt", dog.astype(acc), _grouped(out, groups).astype(acc))
    dq_blocks = []
    dk = jnp.zeros(k.shape, acc)
    dv = jnp.zeros(v.shape, acc)
    for start in range(0, seq, block_size):
        end = start + block_size
        rows = slice(start, end)
        scores = _block_scores(qg[:, rows], k[:, :end], diagonal=start)
        probs = jnp.exp(scores - lse[..., rows, None])
        do_b = dog[:, rows].astype(acc)
        dv = dv.at[:, :end].add(jnp.einsum("bgrts,btgrd->bsgd", probs, do_b))
        d_probs = jnp.einsum("btgrd,bsgd->bgrts", do_b, v[:, :end].astype(acc))
        d_scores = probs * (d_probs - delta[..., rows, None])
        dq_blocks.append(jnp.einsum("bgrts,bsgd->btgrd", d_scores, k[:, :end].astype(acc)) * scale)
        dk = dk.at[:, :end].add(jnp.einsum("bgrts,btgrd->bsgd", d_scores, qg[:, rows].astype(acc)))
    dq = jnp.concatenate(dq_blocks, axis=1).reshape(q.shape)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


causal_attention.defvjp(_causal_attention_fwd, _causal_attention_bwd)
