"""Cached decoding gives the same numbers in jaxml and torchref, step by step."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from jaxml.configs import AttentionConfig
from jaxml.layers.attention import Attention
from jaxml.layers.kv_cache import init_kv_cache
from parity.harness import assert_close, to_torch, tolerance
from torchref.convert import load_jaxml_params
from torchref.layers.attention import Attention as TorchAttention
from torchref.layers.kv_cache import init_kv_cache as torch_init_kv_cache


@pytest.mark.parametrize("attention_type", ["mqa", "gqa"])
def test_decode_steps_match(attention_type: str, device: str) -> None:
    cfg = AttentionConfig(32, 4, attention_type, apply_causal_mask=True, use_rope=True)
    x = np.random.default_rng(0).standard_normal((2, 7, 32)).astype(np.float32)
    params = Attention(cfg).init(jax.random.key(0), x)
    module = load_jaxml_params(TorchAttention(cfg), params).to(device)
    tol = tolerance("float32", device)
    jcache, tcache = init_kv_cache(cfg, 2, 8), torch_init_kv_cache(cfg, 2, 8, device=device)
    with torch.no_grad():
        for start, stop in [(0, 3), (3, 4), (4, 5), (5, 7)]:
            jout = Attention(cfg).apply(params, x[:, start:stop], cache=jcache)
            tout = module(to_torch(x[:, start:stop], device, "float32"), cache=tcache)
            jcache, tcache = jout.cache, tout.cache
            assert_close(f"step {start}:{stop}", jout.out, tout.out, tol)
        assert_close("cached keys", jcache.k, tcache.k, tol)
        with pytest.raises(ValueError, match="cache overflow"):
            module(to_torch(x[:, :2], device, "float32"), cache=tcache)
