"""The Llama-style decoder-only LM (the original framework's "SOTA transformer").

`ids [batch, seq] int32` -> token embedding -> `num_layers` pre-norm blocks -> RMSNorm -> output
projection (`lm_head`, or the embedding itself when `tie_embeddings`) -> logits `[batch, seq,
vocab]` float32. A block is `x += attn(attn_norm(x)); x += ffn(ffn_norm(x))` with the project's
`Attention` (RoPE, mha/mqa/gqa, bias-free), `SwiGLU` or `MoE` and `RMSNorm`.

The layers are a Python loop over `layers_0 ... layers_{N-1}`, not `nn.scan` over stacked
params: every leaf then has exactly one layer's weights, so `torchref.convert` (Dense `kernel` <->
`weight` transposed) and the Hugging Face converter (`model.layers.N.…`) map names one to one,
and XLA schedules and fuses across layer boundaries. The cost is compile time linear in depth
(about 1 s per layer for a train step on this CPU), which is fine at the depths we train here.

Mixed precision (`config.dtype == "bfloat16"`): params stay float32; each block sees its matmul
weights cast to bfloat16 (`nn.map_variables`), the residual stream is bfloat16, while RMSNorm,
RoPE, the attention softmax, the MoE router and the final norm + logits compute in float32.

Training: `LM(config).apply({"params": p}, ids) -> (logits, aux)`, causal attention through the
blockwise kernel. Decoding: `apply(..., method=LM.step)` with explicit positions, a per-layer
cache tuple (`init_cache`) and a key mask, driven by `jaxml.decoding.loop` in `generate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import Array, lax

from jaxml.configs import DecodeConfig, SamplingConfig
from jaxml.configs.lm import LMConfig
from jaxml.decoding import loop, sampling
from jaxml.layers import kv_cache
from jaxml.layers.attention import Attention
from jaxml.layers.dense import Dense
from jaxml.layers.ffn import SwiGLU
from jaxml.layers.kv_cache import KVCache
from jaxml.layers.moe import MoE
from jaxml.layers.norms import RMSNorm
from jaxml.models.transformer import Aux, collect_aux

Cache = tuple[KVCache, ...]  # one KVCache per layer
EMBED_INIT_STD = 0.02
KEEP_FLOAT32 = ("scale", "gate")  # norm scales and the MoE router stay float32 under bfloat16


def _cast_matmul_weights(dtype: Any) -> Any:
    def cast(variables: Any) -> Any:
        def leaf(path: tuple[Any, ...], value: Array) -> Array:
            names = {getattr(key, "key", None) for key in path}
            return value if names & set(KEEP_FLOAT32) else value.astype(dtype)

        return jax.tree_util.tree_map_with_path(leaf, variables)

    return cast


class Block(nn.Module):
    """`(x [batch, seq, embed_dim], positions, cache, mask) -> (x, cache, aux)`.

    Training: no cache, `positions` None (`0 .. seq-1`), `mask` None (causal). Decoding: one
    layer's `KVCache`, `positions [batch, seq]` int32 and `mask [batch, seq, cache_len]` bool, both
    built once per step by the decode loop. `aux` is the MoE aux dict (empty for a dense FFN).
    """

    config: LMConfig

    def setup(self) -> None:
        cfg = self.config
        self.attn_norm = RMSNorm(cfg.norm_eps)
        self.attn = Attention(cfg.attention_config())
        self.ffn_norm = RMSNorm(cfg.norm_eps)
        self.ffn = MoE(cfg.ffn_config()) if cfg.use_moe else SwiGLU(cfg.ffn_config())

    def __call__(
        self,
        x: Array,
        positions: Array | None = None,
        cache: KVCache | None = None,
        mask: Array | None = None,
    ) -> tuple[Array, KVCache | None, Aux]:
        attended = self.attn(self.attn_norm(x), positions=positions, cache=cache, mask=mask)
        x = x + attended.out
        if self.config.use_moe:
            y, aux = self.ffn(self.ffn_norm(x))
        else:
            y, aux = self.ffn(self.ffn_norm(x)), {}
        return x + y, attended.cache, aux


class LM(nn.Module):
    """`ids [batch, seq] -> (logits [batch, seq, vocab_size] float32, aux)`; see the module docstring.

    `aux["aux_loss"]` is the float32 sum of the MoE layers' `aux_loss` (0 without MoE); with MoE
    `aux` also holds `dropped_fraction` and `tokens_per_expert [num_layers, num_experts]`.
    """

    config: LMConfig

    def setup(self) -> None:
        cfg = self.config
        self.embed = nn.Embed(
            cfg.vocab_size, cfg.embed_dim, embedding_init=nn.initializers.normal(EMBED_INIT_STD)
        )
        block = Block
        if cfg.dtype != "float32" and not self.is_initializing():  # params are created float32
            cast = _cast_matmul_weights(jnp.dtype(cfg.dtype))
            block = nn.map_variables(Block, "params", trans_in_fn=cast)
        self.layers = [block(cfg) for _ in range(cfg.num_layers)]
        self.norm = RMSNorm(cfg.norm_eps)
        if not cfg.tie_embeddings:
            self.lm_head = Dense(cfg.vocab_size, use_bias=False)

    def _check(self, ids: Array) -> None:
        if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"ids must be integer [batch, seq], got {ids.dtype} {ids.shape}")
        if ids.shape[1] > self.config.max_seq_len:
            raise ValueError(
                f"ids has {ids.shape[1]} positions, more than max_seq_len={self.config.max_seq_len}"
            )

    def _logits(self, x: Array) -> Array:
        h = self.norm(x.astype(jnp.promote_types(x.dtype, jnp.float32)))
        if self.config.tie_embeddings:
            return self.embed.attend(h)
        return self.lm_head(h)

    def _embed(self, ids: Array) -> Array:
        x = self.embed(ids)
        return x if self.config.dtype == "float32" else x.astype(self.config.dtype)

    def __call__(self, ids: Array) -> tuple[Array, Aux]:
        self._check(ids)
        x = self._embed(ids)
        moe_aux = []
        for layer in self.layers:
            x, _, aux = layer(x)
            if aux:
                moe_aux.append(aux)
        return self._logits(x), collect_aux(moe_aux)

    def step(self, ids: Array, positions: Array, cache: Cache, mask: Array) -> tuple[Array, Cache]:
        """One decode-loop step: `ids [batch, n]` at `positions [batch, n]` int32, appended to
        `cache` (one `KVCache` per layer, from `init_cache`), attending as `mask [batch, n,
        cache_len]` bool allows (`kv_cache.next_positions` / `kv_cache.attention_mask`).
        Returns `(logits [batch, n, vocab] float32, new cache)`.
        """
        self._check(ids)
        if len(cache) != self.config.num_layers:
            raise ValueError(
                f"cache has {len(cache)} layers, the model has num_layers={self.config.num_layers}"
            )
        x = self._embed(ids)
        new_cache = []
        for layer, layer_cache in zip(self.layers, cache, strict=True):
            x, updated, _ = layer(x, positions, layer_cache, mask)
            assert updated is not None
            new_cache.append(updated)
        return self._logits(x), tuple(new_cache)


def init_cache(
    config: LMConfig, batch: int, cache_len: int | None = None, window: int | None = None
) -> Cache:
    """An empty decode cache: one `KVCache` per layer of `cache_len` slots (default
    `config.max_seq_len`), expanding, or a sliding window of `window` tokens."""
    length = config.max_seq_len if cache_len is None else cache_len
    if window is None and length > config.max_seq_len:
        raise ValueError(
            f"init_cache cache_len={length} exceeds the model's max_seq_len={config.max_seq_len}"
        )
    dtype = jnp.dtype(config.dtype)
    layer = kv_cache.init(
        batch, length, config.num_kv_heads, config.head_dim, window=window, dtype=dtype
    )
    return tuple(layer for _ in range(config.num_layers))


SOTATransformer = LM  # the original framework's name for this model


@dataclass(frozen=True)
class LMStep:
    """An LM as the decode loops' step: `(params, cache, tokens [batch, t], positions [batch, t],
    mask [batch, t, cache_len]) -> (logits [batch, t, vocab], cache)`, i.e. `LM.step`. Hashable,
    so it can be a static `jit` argument (`jaxml.decoding.speculative` takes two of them)."""

    config: LMConfig

    def __call__(
        self, params: Any, cache: Cache, tokens: Array, positions: Array, mask: Array
    ) -> tuple[Array, Cache]:
        out: tuple[Array, Cache] = LM(self.config).apply(  # type: ignore[assignment]
            {"params": params}, tokens, positions, cache, mask, method=LM.step
        )
        return out


class Generated(NamedTuple):
    tokens: Array  # int32 [batch, max_new_tokens]; `pad_id` after a row's EOS / budget
    num_generated: Array  # int32 [batch]: new tokens per row (its EOS included)


def _prompt_lengths(prompt_ids: Array, prompt_lengths: Array | None) -> Array:
    if prompt_ids.ndim != 2 or not jnp.issubdtype(prompt_ids.dtype, jnp.integer):
        raise ValueError(f"prompt_ids must be integer [batch, prompt_len], got {prompt_ids.shape}")
    if prompt_lengths is None:
        return jnp.full(prompt_ids.shape[:1], prompt_ids.shape[1], jnp.int32)
    return jnp.asarray(prompt_lengths, jnp.int32)


def generate(
    params: Any,
    config: LMConfig,
    prompt_ids: Array,
    prompt_lengths: Array | None = None,
    *,
    max_new_tokens: int,
    sampling_config: SamplingConfig | None = None,
    decode_config: DecodeConfig | None = None,
    key: Array | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    stop_early: bool = False,
) -> Generated:
    """Continue right-padded `prompt_ids [batch, prompt_len]` (row `b` is its first
    `prompt_lengths[b]` tokens; default all) by up to `max_new_tokens` tokens each.

    `sampling_config` (default greedy) picks each token from explicit noise drawn from `key`
    (`jax.random.fold_in(key, step)`, see `jaxml.decoding.sampling`); a row stops after `eos_id`.
    `decode_config` (default: cache, expanding context of prompt + new tokens) sets the cache
    policy; `use_kv_cache=False` recomputes the whole sequence every step (the reference: same
    tokens). With `stop_early` the loop ends when every row is done. Jitted per shape and config.
    """
    lengths = _prompt_lengths(jnp.asarray(prompt_ids), prompt_lengths)
    sampling_config = sampling_config or SamplingConfig(temperature=0.0)
    decode_config = decode_config or DecodeConfig()
    key = jax.random.key(0) if key is None else key
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} is invalid: must be >= 1")
    total = prompt_ids.shape[1] + max_new_tokens - 1
    if decode_config.window is None and total > config.max_seq_len:
        raise ValueError(
            f"a {prompt_ids.shape[1]}-token prompt and {max_new_tokens} new tokens reach position "
            f"{total - 1}, beyond LMConfig.max_seq_len={config.max_seq_len}"
        )
    static = (config, max_new_tokens, sampling_config, decode_config, eos_id, pad_id, stop_early)
    fn = _generate_cached if decode_config.use_kv_cache else _generate_recompute
    return fn(params, jnp.asarray(prompt_ids), lengths, key, *static)


@partial(jax.jit, static_argnums=range(4, 11))
def _generate_cached(
    params: Any,
    prompt_ids: Array,
    lengths: Array,
    key: Array,
    config: LMConfig,
    steps: int,
    sampling_config: SamplingConfig,
    decode_config: DecodeConfig,
    eos_id: int | None,
    pad_id: int,
    stop_early: bool,
) -> Generated:
    cache_len = decode_config.cache_len(prompt_ids.shape[1], steps)
    cache = init_cache(config, prompt_ids.shape[0], cache_len, window=decode_config.window)
    result = loop.decode(
        LMStep(config),
        params,
        cache,
        prompt_ids,
        lengths,
        steps=steps,
        select=sampling.sampler(sampling_config),
        key=key,
        eos_id=eos_id,
        stop_early=stop_early,
        pad_value=pad_id,
    )
    return Generated(result.outputs, result.num_generated)


@partial(jax.jit, static_argnums=range(4, 11))
def _generate_recompute(
    params: Any,
    prompt_ids: Array,
    lengths: Array,
    key: Array,
    config: LMConfig,
    steps: int,
    sampling_config: SamplingConfig,
    decode_config: DecodeConfig,
    eos_id: int | None,
    pad_id: int,
    stop_early: bool,
) -> Generated:
    """The reference: a full causal forward pass over a fixed `[batch, prompt_len + steps]`
    buffer per step (no cache, no window); token `i` is read at each row's last filled position."""
    del decode_config, stop_early  # the fori_loop always runs every step
    model, select = LM(config), sampling.sampler(sampling_config)
    batch = prompt_ids.shape[0]
    rows = jnp.arange(batch)
    buffer = jnp.zeros((batch, prompt_ids.shape[1] + steps), jnp.int32)
    buffer = buffer.at[:, : prompt_ids.shape[1]].set(prompt_ids)
    out = jnp.full((batch, steps), pad_id, jnp.int32)

    def body(i: Array, carry: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
        buffer, out, done = carry
        logits, _ = model.apply({"params": params}, buffer[:, :-1])
        token = select(logits[rows, lengths + i - 1], jax.random.fold_in(key, i))
        buffer = buffer.at[rows, lengths + i].set(token)
        out = out.at[:, i].set(jnp.where(done, pad_id, token))
        return buffer, out, done if eos_id is None else done | (token == eos_id)

    _, out, _ = lax.fori_loop(0, steps, body, (buffer, out, jnp.zeros((batch,), bool)))
    count = jnp.full((batch,), steps, jnp.int32)
    if eos_id is not None:  # up to and including the first EOS
        is_eos = out == eos_id
        count = jnp.where(jnp.any(is_eos, axis=1), jnp.argmax(is_eos, axis=1) + 1, steps)
    return Generated(out, count.astype(jnp.int32))
