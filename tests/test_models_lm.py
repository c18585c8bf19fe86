"""The Llama-style LM: config validation and original names, parameter layout, causality, cached
decoding == full forward (ragged rows), bfloat16 mixed precision, MoE aux, `generate` (cached ==
recompute for greedy and sampled tokens, ragged prompts, EOS, sliding window, limits)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import Array

from jaxml.configs import DecodeConfig, SamplingConfig
from jaxml.configs.lm import LMConfig, SOTAConfig, llama_ffn_latent_dim
from jaxml.layers import kv_cache
from jaxml.models.lm import LM, SOTATransformer, generate, init_cache

CFG = LMConfig(
    vocab_size=32, embed_dim=16, num_layers=2, num_heads=4, ffn_latent_dim=24, max_seq_len=16
)
IDS = jnp.asarray(np.random.default_rng(0).integers(0, 32, (2, 8)), jnp.int32)


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"num_groups": 3}, "LMConfig.num_groups=3"),
        ({"attention_type": "mqa", "num_groups": 2}, "LMConfig.num_groups=2"),
        ({"attention_type": "sparse"}, "LMConfig.attention_type='sparse'"),
        ({"embed_dim": 18}, "LMConfig.embed_dim=18"),
        ({"vocab_size": 0}, "LMConfig.vocab_size=0"),
        ({"use_moe": True, "topk": 9}, "LMConfig.topk=9"),
        ({"dtype": "float16"}, "LMConfig.dtype='float16'"),
        ({"norm_eps": 0.0}, "LMConfig.norm_eps=0.0"),
        ({"tie_embeddings": 1}, "LMConfig.tie_embeddings=1"),
        ({"attention_kernel": "flash"}, "LMConfig.attention_kernel='flash'"),
    ],
)
def test_config_errors_name_the_field(changes: dict[str, Any], field: str) -> None:
    base = dict(vocab_size=32, embed_dim=16, num_layers=1, num_heads=4)
    with pytest.raises(ValueError, match=field.replace("(", r"\(").replace(")", r"\)")):
        LMConfig(**{**base, **changes})


def test_config_defaults_and_original_names() -> None:
    config = LMConfig(vocab_size=100, embed_dim=256, num_layers=2, num_heads=8)
    assert config.ffn_latent_dim == llama_ffn_latent_dim(256) == 768  # 8/3 · 256 = 682 -> 768
    assert config.attention_type == "gqa" and config.num_groups == 4 and config.d_model == 256
    original = SOTAConfig(vocab_size=100, d_model=256, num_heads=8, num_layers=2, n_kv_heads=2)
    assert original == config.replace(num_groups=2)
    assert hash(original) == hash(config.replace(num_groups=2))
    assert SOTATransformer is LM
    with pytest.raises(ValueError, match="SOTAConfig.dropout=0.1"):
        SOTAConfig(vocab_size=100, d_model=256, num_heads=8, num_layers=2, dropout=0.1)
    with pytest.raises(ValueError, match="both 'd_model' and 'embed_dim'"):
        SOTAConfig(vocab_size=9, d_model=8, embed_dim=8, num_heads=2, num_layers=1)


def test_parameter_layout() -> None:
    shapes = jax.tree_util.tree_map(
        jnp.shape, jax.eval_shape(LM(CFG).init, jax.random.key(0), IDS)["params"]
    )
    head_dim = 4
    assert shapes["embed"] == {"embedding": (32, 16)}
    assert shapes["lm_head"] == {"kernel": (16, 32)} and shapes["norm"] == {"scale": (16,)}
    layer = shapes["layers_1"]
    assert layer["attn"] == {
        "q_proj": {"kernel": (16, 4 * head_dim)},
        "k_proj": {"kernel": (16, 2 * head_dim)},
        "v_proj": {"kernel": (16, 2 * head_dim)},
        "o_proj": {"kernel": (4 * head_dim, 16)},
    }
    assert layer["ffn"] == {
        "w1": {"kernel": (16, 24)},
        "w3": {"kernel": (16, 24)},
        "w2": {"kernel": (24, 16)},
    }
    assert layer["attn_norm"] == layer["ffn_norm"] == {"scale": (16,)}
    assert set(shapes) == {"embed", "layers_0", "layers_1", "norm", "lm_head"}
    tied = jax.eval_shape(LM(CFG.replace(tie_embeddings=True)).init, jax.random.key(0), IDS)
    assert "lm_head" not in tied["params"]


def test_causal_and_checks_input() -> None:
    model = LM(CFG)
    params = model.init(jax.random.key(0), IDS)
    logits, aux = model.apply(params, IDS)
    assert logits.shape == (2, 8, 32) and logits.dtype == jnp.float32
    assert float(aux["aux_loss"]) == 0.0
    changed, _ = model.apply(params, IDS.at[:, 5].set((IDS[:, 5] + 1) % 32))
    np.testing.assert_array_equal(logits[:, :5], changed[:, :5])
    assert not np.allclose(logits[:, 5:], changed[:, 5:])
    with pytest.raises(ValueError, match="more than max_seq_len=16"):
        model.apply(params, jnp.zeros((1, 17), jnp.int32))
    with pytest.raises(ValueError, match="ids must be integer"):
        model.apply(params, jnp.zeros((1, 4)))


def _decode_step(model: LM) -> Any:
    """A jitted decode-loop step: positions and mask from the cache, as the loop builds them."""

    def step(params: Any, ids: Array, cache: Any) -> Any:
        positions = kv_cache.next_positions(cache[0], ids.shape[1])
        mask = kv_cache.attention_mask(cache[0], ids.shape[1])
        return model.apply(params, ids, positions, cache, mask, method=LM.step)

    return jax.jit(step)


@pytest.mark.parametrize("use_moe", [False, True])
def test_cached_decode_equals_full_forward(use_moe: bool) -> None:
    """Prefill 5 tokens, roll row 1 back to a 3-token prompt (ragged), decode 3 tokens one by one:
    every logit equals the full forward pass of that row."""
    config = CFG.replace(use_moe=use_moe, num_experts=4)
    model = LM(config)
    params = model.init(jax.random.key(1), IDS)
    full, _ = model.apply(params, IDS)
    step = _decode_step(model)
    prefill, cache = step(params, IDS[:, :5], init_cache(config, batch=2, cache_len=8))
    np.testing.assert_allclose(prefill, full[:, :5], atol=2e-5)
    cache = tuple(kv_cache.truncate(c, jnp.array([5, 3], jnp.int32)) for c in cache)
    lengths = np.array([5, 3])
    for _ in range(3):
        ids = IDS[np.arange(2), lengths][:, None]
        logits, cache = step(params, ids, cache)
        np.testing.assert_allclose(logits[:, 0], full[np.arange(2), lengths], atol=2e-5)
        lengths += 1
    np.testing.assert_array_equal(cache[1].lengths, lengths)


def test_bfloat16_mixed_precision() -> None:
    config = CFG.replace(dtype="bfloat16", use_moe=True, num_experts=4)
    model = LM(config)
    params = model.init(jax.random.key(0), IDS)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(params)} == {jnp.dtype("float32")}
    logits, aux = model.apply(params, IDS)
    assert logits.dtype == jnp.float32 and aux["aux_loss"].dtype == jnp.float32
    reference, _ = LM(config.replace(dtype="float32")).apply(params, IDS)
    scale = float(jnp.max(jnp.abs(reference)))
    assert 0 < float(jnp.max(jnp.abs(logits - reference))) < 0.05 * scale  # bf16, not f32
    jaxpr = str(jax.make_jaxpr(lambda p: model.apply(p, IDS))(params))
    assert "bf16[2,8,16]" in jaxpr  # the residual stream runs in bfloat16
    grads = jax.grad(lambda p: model.apply(p, IDS)[0].sum())(params)
    assert {g.dtype for g in jax.tree_util.tree_leaves(grads)} == {jnp.dtype("float32")}


def test_moe_aux_statistics() -> None:
    config = CFG.replace(use_moe=True, num_experts=4, capacity=2)
    model = LM(config)
    params = model.init(jax.random.key(0), IDS)
    _, aux = model.apply(params, IDS)
    assert aux["tokens_per_expert"].shape == (2, 4)
    assert float(aux["dropped_fraction"]) > 0 and float(aux["aux_loss"]) > 0


GEN_IDS = jnp.asarray(np.random.default_rng(1).integers(1, 32, (3, 6)), jnp.int32)
GEN_LENGTHS = jnp.array([6, 3, 1], jnp.int32)


@pytest.mark.parametrize(
    "sampling_config",
    [SamplingConfig(temperature=0.0), SamplingConfig(temperature=0.8, top_k=6, top_p=0.9)],
    ids=["greedy", "top-k-top-p"],
)
def test_generate_cached_equals_recompute(sampling_config: SamplingConfig) -> None:
    """Ragged right-padded prompts, EOS: the cached loop gives the full-recompute tokens."""
    params = LM(CFG).init(jax.random.key(0), GEN_IDS)["params"]
    kwargs: dict[str, Any] = dict(
        max_new_tokens=6, sampling_config=sampling_config, key=jax.random.key(4), pad_id=-1
    )
    free = generate(params, CFG, GEN_IDS, GEN_LENGTHS, **kwargs)
    eos = int(free.tokens[0, 2])  # row 0 stops after its third token
    cached = generate(params, CFG, GEN_IDS, GEN_LENGTHS, eos_id=eos, **kwargs)
    reference = generate(
        params, CFG, GEN_IDS, GEN_LENGTHS, eos_id=eos,
        decode_config=DecodeConfig(use_kv_cache=False), **kwargs,
    )  # fmt: skip
    np.testing.assert_array_equal(cached.tokens, reference.tokens)
    np.testing.assert_array_equal(cached.num_generated, reference.num_generated)
    first_eos = int(np.argmax(np.asarray(free.tokens[0]) == eos))
    assert int(cached.num_generated[0]) == first_eos + 1
    assert np.all(np.asarray(cached.tokens[0, first_eos + 1 :]) == -1)
    # the greedy continuation of a row is its greedy argmax under the full forward pass
    if sampling_config.greedy:
        row = jnp.concatenate([GEN_IDS[1, :3], free.tokens[1, :2]])[None]
        logits, _ = LM(CFG).apply({"params": params}, row)
        assert int(jnp.argmax(logits[0, -1])) == int(free.tokens[1, 2])


def test_generate_window_and_limits() -> None:
    params = LM(CFG).init(jax.random.key(0), GEN_IDS)["params"]
    # a window covering the whole sequence changes nothing
    full = generate(params, CFG, GEN_IDS, GEN_LENGTHS, max_new_tokens=5)
    window = DecodeConfig(expanding_context=False, window=10, max_seq_len=10)
    windowed = generate(params, CFG, GEN_IDS, GEN_LENGTHS, max_new_tokens=5, decode_config=window)
    np.testing.assert_array_equal(full.tokens, windowed.tokens)
    with pytest.raises(ValueError, match="beyond LMConfig.max_seq_len=16"):
        generate(params, CFG, GEN_IDS, max_new_tokens=12)
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        generate(params, CFG, GEN_IDS, max_new_tokens=0)
