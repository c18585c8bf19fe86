"""jaxml == torchref for the Llama-style LM: logits and every parameter gradient, MoE aux loss,
tied and untied heads, mha/mqa/gqa, the blockwise training kernel (seq 64) and the dense one
(seq 7), float32 and float64; cached decoding (ragged prefill + steps) in both against each
other; greedy and sampled `generate` tokens (same noise) with ragged prompts and EOS.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxml.configs import SamplingConfig
from jaxml.configs.lm import LMConfig
from jaxml.decoding import sampling as jsampling
from jaxml.layers import kv_cache as jkv
from jaxml.models import lm as jlm
from parity.harness import assert_close, check_parity, tolerance
from torchref.convert import load_jaxml_params
from torchref.layers import kv_cache as tkv
from torchref.models import lm as tlm


def _config(**changes: Any) -> LMConfig:
    base: dict[str, Any] = dict(
        vocab_size=32, embed_dim=16, num_layers=1, num_heads=4, ffn_latent_dim=24, max_seq_len=64
    )
    return LMConfig(**{**base, **changes})


def _ids(batch: int, seq: int, vocab: int = 32) -> np.ndarray:
    return np.random.default_rng(seq).integers(0, vocab, (batch, seq)).astype(np.int32)


# name: (config changes, batch, seq). seq 64 runs the blockwise kernel, seq 7 the dense masked
# one. One layer except where the stacking itself is tested (compile time dominates here).
CASES = {
    "mha-untied-2layers": (dict(attention_type="mha", num_layers=2), 2, 7),
    "gqa-tied": (dict(num_groups=2, tie_embeddings=True), 2, 7),
    "mqa-untied-blockwise": (dict(attention_type="mqa", rope_theta=500.0), 1, 64),
    "moe-gqa-capacity-drops": (
        dict(use_moe=True, num_experts=4, capacity=3, z_loss_coef=1e-3),
        2,
        7,
    ),
    "moe-dropless-tied": (dict(use_moe=True, num_experts=4, tie_embeddings=True), 2, 7),
}
# The MoE router computes in float32 by design, so float64 covers the dense models only.
FLOAT64_CASES = ["gqa-tied", "mqa-untied-blockwise"]


EMBED_STD = 0.5


def _params(config: LMConfig, ids: np.ndarray, seed: int) -> Any:
    """Init params with the embedding rescaled to std 0.5: at the real init (std 0.02) the first
    RMSNorm multiplies gradients by ~1/rms = 50, which turns float32 rounding into 1e-4 errors that
    would test conditioning, not the implementations."""
    params = jlm.LM(config).init(jax.random.key(seed), jnp.asarray(ids))["params"]
    table = params["embed"]["embedding"]
    return {**params, "embed": {"embedding": table * (EMBED_STD / jnp.std(table))}}


def _with_aux(logits: Any, aux: dict[str, Any], cat: Any) -> Any:
    """Logits flattened, then the aux loss: its gradient is checked together with the logits'.

    The caller scales this by `1/sqrt(#logits)` so the harness's random cotangent gives O(1)
    gradients: unscaled they reach ~50, where float32 rounding alone (1e-6 relative, float64
    agrees to 1e-13) exceeds the table's elementwise atol.
    """
    return cat([logits.reshape(-1), aux["aux_loss"].reshape(1)])  # both promote to logits.dtype


@pytest.mark.parametrize(
    "case,dtype", [(c, "float32") for c in CASES] + [(c, "float64") for c in FLOAT64_CASES]
)
def test_lm_logits_and_grads_match(case: str, dtype: str, device: str) -> None:
    changes, batch, seq = CASES[case]
    config = _config(**changes)
    ids = _ids(batch, seq)
    params = _params(config, ids, seed=1)

    scale = 1.0 / np.sqrt(ids.size * config.vocab_size)

    def jax_fn(p: Any, x: Any) -> Any:
        return _with_aux(*jlm.LM(config).apply({"params": p}, x), jnp.concatenate) * scale

    def torch_fn(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return _with_aux(*m(x), torch.cat) * scale

    with jax.enable_x64(dtype == "float64"):
        check_parity(jax_fn, params, tlm.LM(config), torch_fn, [ids], device=device, dtype=dtype)


@pytest.mark.parametrize("case", ["mha-untied-2layers", "moe-dropless-tied"])
def test_lm_cached_decode_matches(case: str) -> None:
    """Prefill 5 tokens, roll row 1 back to 3 (ragged), decode 2 tokens: jaxml == torch each step."""
    config = _config(**CASES[case][0])
    tol = tolerance("float32", "cpu")
    ids = _ids(2, 7)
    model = jlm.LM(config)
    params = {"params": _params(config, ids, seed=2)}
    tmodel = load_jaxml_params(tlm.LM(config), params)
    jcache = jlm.init_cache(config, 2, 8)
    tcache = tlm.init_cache(config, 2, 8)
    lengths = np.array([5, 3])
    for call in range(3):
        chunk = ids[:, :5] if call == 0 else ids[np.arange(2), lengths][:, None]
        n = chunk.shape[1]
        jlogits, jcache = model.apply(
            params,
            jnp.asarray(chunk),
            jkv.next_positions(jcache[0], n),
            jcache,
            jkv.attention_mask(jcache[0], n),
            method=jlm.LM.step,
        )
        with torch.no_grad():
            tlogits, tcache = tmodel.step(
                torch.from_numpy(chunk).long(),
                tkv.next_positions(tcache[0], n),
                tcache,
                tkv.attention_mask(tcache[0], n),
            )
        assert_close(f"step {call} logits", jlogits, tlogits, tol)
        if call == 0:
            rollback = np.array([5, 3], np.int32)
            jcache = tuple(jkv.truncate(c, jnp.asarray(rollback)) for c in jcache)
            tcache = tuple(tkv.truncate(c, torch.from_numpy(rollback)) for c in tcache)
        else:
            lengths += 1


@pytest.mark.parametrize(
    "sampling_config",
    [SamplingConfig(temperature=0.0), SamplingConfig(temperature=1.0, top_k=8, min_p=0.05)],
    ids=["greedy", "sampled"],
)
def test_lm_generate_tokens_match(sampling_config: SamplingConfig) -> None:
    """Ragged prompts and EOS: jaxml and torchref pick the same tokens given the same noise."""
    config = _config(**CASES["gqa-tied"][0])
    ids = _ids(3, 5)
    lengths = np.array([5, 2, 4], np.int32)
    params = _params(config, ids, seed=4)
    steps, key, eos = 6, jax.random.key(7), 9  # 9: row 0 stops first, row 2 later (sampled)
    jax_out = jlm.generate(
        params, config, jnp.asarray(ids), jnp.asarray(lengths), max_new_tokens=steps,
        sampling_config=sampling_config, key=key, eos_id=eos,
    )  # fmt: skip
    noise = np.stack(
        [jsampling.exponential_noise(jax.random.fold_in(key, i), (3, 32)) for i in range(steps)]
    )
    torch_out = tlm.generate(
        load_jaxml_params(tlm.LM(config), {"params": params}),
        torch.from_numpy(ids).long(),
        torch.from_numpy(lengths),
        max_new_tokens=steps,
        sampling_config=sampling_config,
        noise=torch.from_numpy(noise),
        eos_id=eos,
    )
    np.testing.assert_array_equal(np.asarray(jax_out.tokens), torch_out.tokens.numpy())
    np.testing.assert_array_equal(np.asarray(jax_out.num_generated), torch_out.num_generated)
