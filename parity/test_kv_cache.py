"""Cached decoding gives the same numbers in jaxml and torchref, step by step, per-row and ring."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from jaxml.configs import AttentionConfig
from jaxml.layers import kv_cache
from jaxml.layers.attention import Attention
from parity.harness import assert_close, to_torch, tolerance
from torchref.convert import load_jaxml_params
from torchref.layers import kv_cache as torch_kv_cache
from torchref.layers.attention import Attention as TorchAttention


@pytest.mark.parametrize(("attention_type", "window"), [("mqa", None), ("gqa", 3)])
def test_decode_steps_match(attention_type: str, window: int | None, device: str) -> None:
    cfg = AttentionConfig(32, 4, attention_type, apply_causal_mask=True, use_rope=True)
    x = np.random.default_rng(0).standard_normal((2, 7, 32)).astype(np.float32)
    params = Attention(cfg).init(jax.random.key(0), x)
    module = load_jaxml_params(TorchAttention(cfg), params).to(device)
    tol = tolerance("float32", device)
    cache_len = 8 if window is None else 4  # the window case wraps around the ring
    dims = (2, cache_len, cfg.num_kv_heads, cfg.head_dim)
    jcache = kv_cache.init(*dims, window=window)
    tcache = torch_kv_cache.init(*dims, window=window, device=device)
    with torch.no_grad():
        for start, stop, keep in [(0, 3, [3, 2]), (3, 4, None), (4, 5, None), (5, 7, None)]:
            n = stop - start
            jout = Attention(cfg).apply(
                params,
                x[:, start:stop],
                positions=kv_cache.next_positions(jcache, n),
                cache=jcache,
                mask=kv_cache.attention_mask(jcache, n),
            )
            tout = module(
                to_torch(x[:, start:stop], device, "float32"),
                positions=torch_kv_cache.next_positions(tcache, n),
                cache=tcache,
                mask=torch_kv_cache.attention_mask(tcache, n),
            )
            jcache, tcache = jout.cache, tout.cache
            assert_close(f"step {start}:{stop}", jout.out, tout.out, tol)
            if keep is not None:  # roll row 1 back one token: the rows go on at their own offsets
                jcache = kv_cache.truncate(jcache, np.array(keep))
                tcache = torch_kv_cache.truncate(tcache, torch.tensor(keep))
        assert_close("cached keys", jcache.k, tcache.k, tol)
        np.testing.assert_array_equal(jcache.positions, tcache.positions.cpu().numpy())
        np.testing.assert_array_equal(jcache.lengths, tcache.lengths.cpu().numpy())
        if window is None:
            with pytest.raises(ValueError, match="cache overflow"):
                module(
                    to_torch(x[:, :2], device, "float32"),
                    positions=torch_kv_cache.next_positions(tcache, 2),
                    cache=tcache,
                    mask=torch_kv_cache.attention_mask(tcache, 2),
                )
