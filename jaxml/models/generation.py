"""Autoregressive prediction on continuous values: each prediction is fed back as the next input.

`predict_autoregressively` (autoregressive model) and `generate` (encoder-decoder) decode with the
KV cache through `jaxml.decoding.loop` (prefill once, one cached step per prediction; the
encoder-decoder's cross-attention keys/values are computed once) as `DecodeConfig` says; with
`use_kv_cache=False` they call the references below.

`predict_autoregressively_recompute` / `generate_recompute` run one `lax.fori_loop` of FULL
forward passes over a fixed-size buffer: the reference the cached path is tested against. Causal
attention makes position `t` depend on positions `<= t` only, so the not-yet-generated tail of
the buffer cannot change the result: with dense FFNs, and with dropless MoE FFNs (no
`capacity`/`capacity_factor`), this equals calling the model on the growing sequence step by step
(and equals the cached path). A capacity-limited MoE shares its expert slots among every token in
the forward pass (the unfilled tail and the other batch rows included), so which choices it drops
can differ from the step-by-step calls.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array, lax

from jaxml.configs import DecodeConfig, TransformerConfig
from jaxml.decoding import loop
from jaxml.models.transformer import AutoregressiveTransformerModel, EncoderDecoder, init_cache


def _check_feedback(config: TransformerConfig, what: str) -> None:
    if config.output_dim != config.input_dim:
        raise ValueError(
            f"{what} feeds predictions back as inputs, so output_dim={config.output_dim} "
            f"must equal input_dim={config.input_dim}"
        )


@partial(jax.jit, static_argnums=(0, 3))
def predict_autoregressively_recompute(
    model: AutoregressiveTransformerModel, params: Any, prefix: Array, steps: int
) -> Array:
    """Continue `prefix: [batch, prefix_len, input_dim]` by `steps` predictions.

    `params` is the model's `params` tree. Returns `[batch, steps, output_dim]`: prediction `i`
    is the model's output at the last position of `prefix ++ predictions[:i]`.
    """
    _check_feedback(model.config, "predict_autoregressively_recompute")
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
def generate_recompute(
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
    _check_feedback(model.config, "generate_recompute")
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


def _feed_back(outputs: Array, key: Array) -> Array:
    """The continuous models' `select`: the prediction is the next input."""
    return outputs


def _check_positions(config: TransformerConfig, needed: int, what: str) -> None:
    if needed > config.max_seq_len:
        raise ValueError(
            f"{what} reaches position {needed - 1}, but the sinusoidal table of "
            f"TransformerConfig.max_seq_len={config.max_seq_len} ends at {config.max_seq_len - 1}"
        )


def predict_autoregressively(
    model: AutoregressiveTransformerModel,
    params: Any,
    prefix: Array,
    steps: int,
    prefix_lengths: Array | None = None,
    decode_config: DecodeConfig | None = None,
) -> Array:
    """Continue `prefix: [batch, prefix_len, input_dim]` by `steps` predictions, with the cache.

    `prefix_lengths: [batch]` int (default: all `prefix_len`) makes a ragged, right-padded batch.
    `decode_config` (default `DecodeConfig()`: cache, expanding context) picks the cache policy.
    Returns `[batch, steps, output_dim]`, as `predict_autoregressively_recompute`.
    """
    _check_feedback(model.config, "predict_autoregressively")
    decode_config = decode_config or DecodeConfig()
    if prefix.ndim != 3 or steps < 1:
        raise ValueError(
            f"need prefix [batch, prefix_len, input_dim] and steps >= 1, got {prefix.shape}, {steps}"
        )
    if not decode_config.use_kv_cache:
        if prefix_lengths is not None:
            raise ValueError("ragged prefixes (prefix_lengths) need DecodeConfig.use_kv_cache=True")
        return predict_autoregressively_recompute(model, params, prefix, steps)
    _check_positions(model.config, prefix.shape[1] + steps - 1, "predict_autoregressively")
    if prefix_lengths is None:
        prefix_lengths = jnp.full((prefix.shape[0],), prefix.shape[1], jnp.int32)
    return _predict_cached(
        model, params, jnp.asarray(prefix), jnp.asarray(prefix_lengths), steps, decode_config
    )


@partial(jax.jit, static_argnums=(0, 4, 5))
def _predict_cached(
    model: AutoregressiveTransformerModel,
    params: Any,
    prefix: Array,
    prefix_lengths: Array,
    steps: int,
    decode_config: DecodeConfig,
) -> Array:
    batch, prefix_len, _ = prefix.shape
    cache = init_cache(
        model.config,
        model.config.num_layers,
        batch,
        decode_config.cache_len(prefix_len, steps),
        window=decode_config.window,
        dtype=prefix.dtype,
    )

    def step(params: Any, cache: Any, x: Array, positions: Array, mask: Array) -> tuple[Array, Any]:
        return model.apply(
            {"params": params},
            x,
            positions,
            mask,
            cache,
            method=AutoregressiveTransformerModel.decode_step,
        )

    result = loop.decode(
        step,
        params,
        cache,
        prefix,
        prefix_lengths,
        steps=steps,
        select=_feed_back,
        key=jax.random.key(0),
    )
    return result.outputs


def generate(
    model: EncoderDecoder,
    params: Any,
    source: Array,
    steps: int,
    start: Array | None = None,
    source_mask: Array | None = None,
    decode_config: DecodeConfig | None = None,
) -> Array:
    """Greedy continuous decoding with the cache: encode `source` once (and every decoder layer's
    cross-attention keys/values), then one cached decoder step per prediction.

    Arguments and result as `generate_recompute`: `[batch, steps, output_dim]`.
    """
    _check_feedback(model.config, "generate")
    decode_config = decode_config or DecodeConfig()
    if source.ndim != 3 or steps < 1:
        raise ValueError(
            f"need source [batch, src_len, input_dim] and steps >= 1, got {source.shape}, {steps}"
        )
    if not decode_config.use_kv_cache:
        return generate_recompute(model, params, source, steps, start, source_mask)
    batch, _, dim = source.shape
    if start is None:
        start = jnp.zeros((batch, 1, dim), source.dtype)
    if start.shape != (batch, 1, dim):
        raise ValueError(
            f"start must be [batch, 1, input_dim]={(batch, 1, dim)}, got {start.shape}"
        )
    _check_positions(model.config, steps, "generate")
    return _generate_cached(model, params, source, steps, start, source_mask, decode_config)


@partial(jax.jit, static_argnums=(0, 3, 6))
def _generate_cached(
    model: EncoderDecoder,
    params: Any,
    source: Array,
    steps: int,
    start: Array,
    source_mask: Array | None,
    decode_config: DecodeConfig,
) -> Array:
    variables = {"params": params}
    cache = model.apply(
        variables,
        source,
        source_mask,
        decode_config.cache_len(1, steps),
        decode_config.window,
        method=EncoderDecoder.start_decoding,
    )

    def step(params: Any, cache: Any, x: Array, positions: Array, mask: Array) -> tuple[Array, Any]:
        return model.apply(
            {"params": params}, x, positions, mask, cache, method=EncoderDecoder.decode_step
        )

    lengths = jnp.ones((source.shape[0],), jnp.int32)
    result = loop.decode(
        step, params, cache, start, lengths, steps=steps, select=_feed_back, key=jax.random.key(0)
    )
    return result.outputs
