"""Autoregressive prediction on continuous values: each prediction is fed back as the next input.

Both functions run one `lax.fori_loop` of full forward passes over a fixed-size buffer (one
compilation per shape). Causal attention makes position `t` depend on positions `<= t` only, so
the not-yet-generated tail of the buffer cannot change the result: with dense FFNs, and with
dropless MoE FFNs (no `capacity`/`capacity_factor`), this equals calling the model on the
growing sequence step by step. A capacity-limited MoE shares its expert slots among every token
in the forward pass (the unfilled tail and the other batch rows included), so which choices it
drops can differ from the step-by-step calls.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array, lax

from jaxml.configs import TransformerConfig
from jaxml.models.transformer import AutoregressiveTransformerModel, EncoderDecoder


def _check_feedback(config: TransformerConfig, what: str) -> None:
    if config.output_dim != config.input_dim:
        raise ValueError(
            f"{what} feeds predictions back as inputs, so output_dim={config.output_dim} "
            f"must equal input_dim={config.input_dim}"
        )


@partial(jax.jit, static_argnums=(0, 3))
def predict_autoregressively(
    model: AutoregressiveTransformerModel, params: Any, prefix: Array, steps: int
) -> Array:
    """Continue `prefix: [batch, prefix_len, input_dim]` by `steps` predictions.

    `params` is the model's `params` tree. Returns `[batch, steps, output_dim]`: prediction `i`
    is the model's output at the last position of `prefix ++ predictions[:i]`.
    """
    _check_feedback(model.config, "predict_autoregressively")
    if prefix.ndim != 3 or prefix.shape[1] < 1 or steps < 1:
        raise ValueError(
            f"need prefix [batch, prefix_len >= 1, input_dim] and steps >= 1, got {prefix.shape}, {steps}"
        )
    batch, prefix_len, dim = prefix.shape

    def step(i: Array, preds: Array) -> Array:
        seq = jnp.concatenate([prefix, preds[:, :-1]], axis=1)  # [batch, prefix_len+steps-1, dim]
        out, _ = model.apply({"params": params}, seq)
        nxt = lax.dynamic_slice_in_dim(out, prefix_len - 1 + i, 1, axis=1)
        return lax.dynamic_update_slice_in_dim(preds, nxt.astype(preds.dtype), i, axis=1)

    return lax.fori_loop(0, steps, step, jnp.zeros((batch, steps, dim), prefix.dtype))


@partial(jax.jit, static_argnums=(0, 3))
def generate(
    model: EncoderDecoder,
    params: Any,
    source: Array,
    steps: int,
    start: Array | None = None,
    source_mask: Array | None = None,
) -> Array:
    """Greedy continuous decoding: encode `source` once, then feed each prediction back.

    `source: [batch, src_len, input_dim]`; `start: [batch, 1, input_dim]` is the first decoder
    input (default zeros); `source_mask: [batch, src_len]` bool marks real source positions.
    Returns `[batch, steps, output_dim]`: prediction `i` is the decoder's output at position `i`
    for the target `start ++ predictions[:i]`.
    """
    _check_feedback(model.config, "generate")
    if source.ndim != 3 or steps < 1:
        raise ValueError(
            f"need source [batch, src_len, input_dim] and steps >= 1, got {source.shape}, {steps}"
        )
    batch, _, dim = source.shape
    if start is None:
        start = jnp.zeros((batch, 1, dim), source.dtype)
    if start.shape != (batch, 1, dim):
        raise ValueError(
            f"start must be [batch, 1, input_dim]={(batch, 1, dim)}, got {start.shape}"
        )
    variables = {"params": params}
    memory, _ = model.apply(variables, source, source_mask, method=EncoderDecoder.encode)

    def step(i: Array, preds: Array) -> Array:
        target = jnp.concatenate([start, preds[:, :-1]], axis=1)  # [batch, steps, dim]
        out, _ = model.apply(variables, target, memory, source_mask, method=EncoderDecoder.decode)
        nxt = lax.dynamic_slice_in_dim(out, i, 1, axis=1)
        return lax.dynamic_update_slice_in_dim(preds, nxt.astype(preds.dtype), i, axis=1)

    return lax.fori_loop(0, steps, step, jnp.zeros((batch, steps, dim), source.dtype))
