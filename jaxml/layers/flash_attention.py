"""Causal self-attention computed by query blocks, with a recomputing `jax.custom_vjp` backward.

Same math as `dot_product_attention(q, k, v, causal_mask)`, organised for speed:
- query block i only meets key blocks 0..i (the fully masked blocks above the diagonal are never
  computed: about half the FLOPs of a dense causal attention at long lengths);
- the forward pass keeps only the output and the row log-sum-exp `lse`; the backward pass
  recomputes each block's probabilities from `lse` instead of storing the `[seq, seq]` matrices
  (the FlashAttention recipe, Dao et al. 2022, written with plain einsums);
- inside, everything is head-major: queries `[batch, groups, per_group, seq, head_dim]`, keys and
  values `[batch, groups, seq, head_dim]`, transposed once on the way in and once on the way out,
  so every block is a contiguous slice and every einsum a plain batched matmul (slicing the
  sequence-major layout per block cost a strided copy per block and operand).
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


def _queries_head_major(q: Array, num_kv_heads: int) -> Array:
    """`[batch, seq, heads, dim]` -> `[batch, groups, per_group, seq, dim]`."""
    batch, seq, heads, dim = q.shape
    grouped = q.reshape(batch, seq, num_kv_heads, heads // num_kv_heads, dim)
    return grouped.transpose(0, 2, 3, 1, 4)


def _queries_seq_major(qh: Array) -> Array:
    """`[batch, groups, per_group, seq, dim]` -> `[batch, seq, heads, dim]`."""
    batch, groups, per_group, seq, dim = qh.shape
    return qh.transpose(0, 3, 1, 2, 4).reshape(batch, seq, groups * per_group, dim)


def _block_scores(qb: Array, kb: Array, diagonal: bool) -> Array:
    """Scores `[batch, groups, per_group, block, keys]`; the last key block is masked when `diagonal`."""
    acc = jnp.promote_types(qb.dtype, jnp.float32)  # float32, or float64 for float64 inputs
    scores = jnp.einsum("bgrtd,bgsd->bgrts", qb, kb, preferred_element_type=acc)
    if diagonal:
        t, s = scores.shape[-2:]
        allowed = jnp.arange(s)[None, :] <= (s - t + jnp.arange(t))[:, None]
        scores = jnp.where(allowed, scores, jnp.finfo(acc).min)
    return scores


def _forward(qh: Array, kh: Array, vh: Array, block_size: int) -> tuple[Array, Array]:
    """Head-major `qh` (already scaled), `kh`, `vh` -> output `qh.shape` and lse `qh.shape[:-1]`."""
    seq = qh.shape[3]
    outs, lses = [], []
    for start in range(0, seq, block_size):
        end = start + block_size
        scores = _block_scores(qh[..., start:end, :], kh[:, :, :end], diagonal=True)
        row_max = jnp.max(scores, axis=-1, keepdims=True)
        probs = jnp.exp(scores - row_max)
        row_sum = jnp.sum(probs, axis=-1, keepdims=True)
        probs = (probs / row_sum).astype(vh.dtype)
        outs.append(jnp.einsum("bgrts,bgsd->bgrtd", probs, vh[:, :, :end]))
        lses.append((row_max + jnp.log(row_sum))[..., 0])  # [batch, groups, per_group, block]
    return jnp.concatenate(outs, axis=3), jnp.concatenate(lses, axis=3)


def _head_major(q: Array, k: Array, v: Array) -> tuple[Array, Array, Array]:
    scale = (1.0 / np.sqrt(q.shape[-1])).astype(q.dtype)
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [batch, groups, seq, dim]
    return _queries_head_major(q * scale, k.shape[2]), kh, vh


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def causal_attention(q: Array, k: Array, v: Array, block_size: int = 64) -> Array:
    """Causal softmax attention `[batch, seq, num_heads, head_dim]`; see the module docstring."""
    return _queries_seq_major(_forward(*_head_major(q, k, v), block_size)[0])


def _causal_attention_fwd(
    q: Array, k: Array, v: Array, block_size: int
) -> tuple[Array, tuple[Array, ...]]:
    qh, kh, vh = _head_major(q, k, v)
    out, lse = _forward(qh, kh, vh, block_size)
    # residuals: head-major inputs, output and lse; no [seq, seq] tensor
    return _queries_seq_major(out), (qh, kh, vh, out, lse)


def _causal_attention_bwd(
    block_size: int, residuals: tuple[Array, ...], d_out: Array
) -> tuple[Array, Array, Array]:
    qh, kh, vh, out, lse = residuals
    acc = jnp.promote_types(qh.dtype, jnp.float32)
    seq, dim = qh.shape[3:]
    doh = _queries_head_major(d_out, kh.shape[1]).astype(acc)
    # D_i = sum_j P_ij dP_ij = rowsum(dO_i * O_i), the softmax backward's correction term.
    delta = jnp.sum(doh * out.astype(acc), axis=-1)
    dq_blocks = []
    dk = jnp.zeros(kh.shape, acc)
    dv = jnp.zeros(vh.shape, acc)
    for start in range(0, seq, block_size):
        end = start + block_size
        qb, do_b = qh[..., start:end, :], doh[..., start:end, :]
        kb, vb = kh[:, :, :end].astype(acc), vh[:, :, :end].astype(acc)
        probs = jnp.exp(
            _block_scores(qb, kh[:, :, :end], diagonal=True) - lse[..., start:end, None]
        )
        dv = dv.at[:, :, :end].add(jnp.einsum("bgrts,bgrtd->bgsd", probs, do_b))
        d_probs = jnp.einsum("bgrtd,bgsd->bgrts", do_b, vb)
        d_scores = probs * (d_probs - delta[..., start:end, None])
        dq_blocks.append(jnp.einsum("bgrts,bgsd->bgrtd", d_scores, kb))
        dk = dk.at[:, :, :end].add(jnp.einsum("bgrts,bgrtd->bgsd", d_scores, qb.astype(acc)))
    scale = (1.0 / np.sqrt(dim)).astype(acc)
    dq = _queries_seq_major(jnp.concatenate(dq_blocks, axis=3) * scale)
    dk, dv = dk.transpose(0, 2, 1, 3), dv.transpose(0, 2, 1, 3)
    return dq.astype(qh.dtype), dk.astype(kh.dtype), dv.astype(vh.dtype)


causal_attention.defvjp(_causal_attention_fwd, _causal_attention_bwd)
