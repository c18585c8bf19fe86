"""jaxml and torchref decode the same tokens and values: sampling from the same noise, the loop
(ragged rows, EOS), and the classic models with an expanding or sliding-window cache."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxml.configs import AttentionConfig, DecodeConfig, SamplingConfig, TransformerConfig
from jaxml.decoding import loop, sampling
from jaxml.layers import kv_cache
from jaxml.layers.attention import Attention
from jaxml.models import generation
from jaxml.models.transformer import AutoregressiveTransformerModel, EncoderDecoder
from parity.harness import assert_close, to_torch, tolerance
from torchref.convert import load_jaxml_params
from torchref.decoding import loop as torch_loop
from torchref.decoding import sampling as torch_sampling
from torchref.layers import kv_cache as torch_kv_cache
from torchref.layers.attention import Attention as TorchAttention
from torchref.models import generation as torch_generation
from torchref.models import transformer as torch_transformer

CONFIGS = [
    SamplingConfig(temperature=0.0),
    SamplingConfig(temperature=0.7),
    SamplingConfig(top_k=5),
    SamplingConfig(top_p=0.8),
    SamplingConfig(temperature=1.3, min_p=0.05),
    SamplingConfig(temperature=0.9, top_k=20, top_p=0.95, min_p=0.01),
]
VOCAB, STEPS = 13, 6


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_sampling_draws_the_same_tokens_from_the_same_noise(config: SamplingConfig) -> None:
    logits = 2 * np.random.default_rng(0).standard_normal((64, 50)).astype(np.float32)
    noise = np.array(sampling.exponential_noise(jax.random.key(1), logits.shape))
    tokens = sampling.sample(jnp.asarray(logits), jnp.asarray(noise), config)
    torch_tokens = torch_sampling.sample(torch.from_numpy(logits), torch.from_numpy(noise), config)
    np.testing.assert_array_equal(np.asarray(tokens), torch_tokens.numpy())
    if not config.greedy:
        assert_close(
            "probabilities",
            sampling.probabilities(jnp.asarray(logits), config),
            torch_sampling.probabilities(torch.from_numpy(logits), config),
            tolerance("float32", "cpu"),
        )


ATTN = AttentionConfig(16, 4, "gqa", num_groups=2, apply_causal_mask=True, use_rope=True)


class TinyLM(nn.Module):
    config: AttentionConfig

    def setup(self) -> None:
        self.embed = nn.Embed(VOCAB, self.config.embed_dim)
        self.attn = Attention(self.config)

    def __call__(self, ids: Any, positions: Any, mask: Any, cache: Any) -> tuple[Any, Any]:
        h = self.embed(ids)
        result = self.attn(h, positions=positions, cache=cache, mask=mask)
        return self.embed.attend(h + result.out), result.cache


class TorchTinyLM(torch.nn.Module):
    def __init__(self, config: AttentionConfig) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, config.embed_dim)
        self.attn = TorchAttention(config)

    def forward(self, ids: Any, positions: Any, mask: Any, cache: Any) -> tuple[Any, Any]:
        h = self.embed(ids.long())
        result = self.attn(h, positions=positions, cache=cache, mask=mask)
        return (h + result.out) @ self.embed.weight.T, result.cache


@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[5]], ids=["greedy", "sampled"])
def test_decode_loop_same_tokens(config: SamplingConfig, device: str) -> None:
    prompts = np.random.default_rng(2).integers(0, VOCAB, (3, 4)).astype(np.int32)
    lengths = np.array([4, 1, 3], np.int32)
    params = TinyLM(ATTN).init(jax.random.key(0), prompts, None, None, None)["params"]
    key = jax.random.key(7)
    eos = 3
    dims = (3, 4 + STEPS - 1, ATTN.num_kv_heads, ATTN.head_dim)

    def step(p: Any, cache: Any, ids: Any, positions: Any, mask: Any) -> Any:
        return TinyLM(ATTN).apply({"params": p}, ids, positions, mask, cache)

    result = jax.jit(
        lambda p, prompts, lengths: loop.decode(
            step, p, kv_cache.init(*dims), prompts, lengths, steps=STEPS,
            select=sampling.sampler(config), key=key, eos_id=eos, pad_value=-1,
        )
    )(params, prompts, lengths)  # fmt: skip

    module = load_jaxml_params(TorchTinyLM(ATTN), params).to(device)
    noise = torch.from_numpy(
        np.stack(
            [
                sampling.exponential_noise(jax.random.fold_in(key, i), (3, VOCAB))
                for i in range(STEPS)
            ]
        )
    ).to(device)
    torch_result = torch_loop.decode(
        lambda cache, ids, positions, mask: module(ids, positions, mask, cache),
        torch_kv_cache.init(*dims, device=device),
        to_torch(prompts, device, "float32"),
        to_torch(lengths, device, "float32"),
        steps=STEPS,
        select=torch_sampling.sampler(config, noise),
        eos_id=eos,
        pad_value=-1,
    )
    np.testing.assert_array_equal(np.asarray(result.outputs), torch_result.outputs.cpu().numpy())
    np.testing.assert_array_equal(
        np.asarray(result.num_generated), torch_result.num_generated.cpu().numpy()
    )


@pytest.mark.parametrize(
    "decode_config",
    [DecodeConfig(), DecodeConfig(expanding_context=False, window=3)],
    ids=["expanding", "window3"],
)
def test_classic_models_decode_the_same_values(decode_config: DecodeConfig, device: str) -> None:
    cfg = TransformerConfig(
        input_dim=2, embed_dim=16, ffn_latent_dim=16, num_heads=4, output_dim=2, num_layers=2,
        attention_type="gqa", max_seq_len=12,
    )  # fmt: skip
    tol = tolerance("float32", device)
    x = np.random.default_rng(3).standard_normal((3, 5, 2)).astype(np.float32)
    lengths = np.array([5, 2, 4], np.int32)
    ar = AutoregressiveTransformerModel(cfg)
    params = ar.init(jax.random.key(0), x)["params"]
    torch_ar = load_jaxml_params(torch_transformer.AutoregressiveTransformerModel(cfg), params)
    assert_close(
        "predict_autoregressively",
        generation.predict_autoregressively(ar, params, x, STEPS, lengths, decode_config),
        torch_generation.predict_autoregressively(
            torch_ar.to(device),
            to_torch(x, device, "float32"),
            STEPS,
            to_torch(lengths, device, "float32"),
            decode_config,
        ),
        tol,
    )
    ed = EncoderDecoder(cfg)
    params = ed.init(jax.random.key(1), x, x)["params"]
    torch_ed = load_jaxml_params(torch_transformer.EncoderDecoder(cfg), params)
    mask = np.arange(5)[None] < lengths[:, None]
    assert_close(
        "generate",
        generation.generate(ed, params, x, STEPS, None, mask, decode_config),
        torch_generation.generate(
            torch_ed.to(device),
            to_torch(x, device, "float32"),
            STEPS,
            None,
            to_torch(mask, device, "float32"),
            decode_config,
        ),
        tol,
    )
