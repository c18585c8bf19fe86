"""Hugging Face Llama / Mixtral directories: exporter -> loader round trips are bit-exact (single
file and sharded), the tensor names are HF's, unsupported config.json features are refused by
name, nothing is overwritten; with `transformers` installed, its logits match ours."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from jaxml.configs import LMConfig
from jaxml.interop import hf
from jaxml.models.lm import LM

LLAMA = LMConfig(
    vocab_size=48, embed_dim=16, num_layers=2, num_heads=4, num_groups=2, ffn_latent_dim=24,
    max_seq_len=32, rope_theta=500.0, norm_eps=1e-6,
)  # fmt: skip
MIXTRAL = LLAMA.replace(use_moe=True, num_experts=4, topk=2, tie_embeddings=True, alpha=0.02)
IDS = np.random.default_rng(0).integers(0, 48, (2, 9)).astype(np.int32)


def _params(config: LMConfig, seed: int = 0) -> Any:
    params = LM(config).init(jax.random.key(seed), jnp.asarray(IDS))["params"]
    return jax.tree_util.tree_map(np.asarray, params)


def _assert_same_tree(a: Any, b: Any) -> None:
    flat_a = jax.tree_util.tree_leaves_with_path(a)
    flat_b = dict(jax.tree_util.tree_leaves_with_path(b))
    assert len(flat_a) == len(flat_b)
    for path, leaf in flat_a:
        other = flat_b[path]
        assert other.dtype == np.float32 and np.array_equal(np.asarray(leaf), other), path


@pytest.mark.parametrize("config", [LLAMA, MIXTRAL], ids=["llama", "mixtral"])
@pytest.mark.parametrize("shard", [None, 3000])
def test_round_trip_is_bit_exact(config: LMConfig, shard: int | None, tmp_path: Path) -> None:
    params = _params(config)
    files = hf.save_hf(tmp_path / "m", config, params, max_shard_bytes=shard)
    names = {f.name for f in files}
    if shard is None:
        assert names == {"config.json", "model.safetensors"}
    else:
        shards = sorted(n for n in names if n.startswith("model-"))
        assert len(shards) > 2 and shards[-1].endswith(f"-of-{len(shards):05d}.safetensors")
        assert "model.safetensors.index.json" in names
    loaded_config, loaded = hf.load_hf(tmp_path / "m")
    assert loaded_config == config
    _assert_same_tree(params, loaded)
    logits, _ = LM(config).apply({"params": loaded}, IDS)
    reference, _ = LM(config).apply({"params": params}, IDS)
    np.testing.assert_array_equal(logits, reference)


def test_tensor_names_and_layout(tmp_path: Path) -> None:
    params = _params(LLAMA)
    hf.save_hf(tmp_path / "llama", LLAMA, params)
    tensors = safetensors.numpy.load_file(tmp_path / "llama" / "model.safetensors")
    assert tensors["model.layers.1.self_attn.k_proj.weight"].shape == (8, 16)  # [kv_heads·hd, d]
    assert tensors["model.layers.0.mlp.gate_proj.weight"].shape == (24, 16)
    np.testing.assert_array_equal(
        tensors["model.layers.0.mlp.up_proj.weight"], params["layers_0"]["ffn"]["w3"]["kernel"].T
    )
    assert tensors["lm_head.weight"].shape == (48, 16)
    assert len(tensors) == 3 + 2 * 9
    config = json.loads((tmp_path / "llama" / "config.json").read_text())
    assert config["num_key_value_heads"] == 2 and config["model_type"] == "llama"
    hf.save_hf(tmp_path / "mixtral", MIXTRAL, _params(MIXTRAL))
    tensors = safetensors.numpy.load_file(tmp_path / "mixtral" / "model.safetensors")
    assert "lm_head.weight" not in tensors
    assert tensors["model.layers.1.block_sparse_moe.experts.3.w2.weight"].shape == (16, 24)
    assert tensors["model.layers.0.block_sparse_moe.gate.weight"].shape == (4, 16)


BASE_HF = hf.config_to_hf(LLAMA)


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "rope_parameters"),
        (
            {"model_type": "mixtral", "sliding_window": 4096, "num_local_experts": 4},
            "sliding_window",
        ),
        ({"attention_bias": True}, "attention_bias"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"head_dim": 8}, "head_dim"),
        ({"model_type": "gpt2"}, "model_type"),
        ({"attention_dropout": 0.1}, "attention_dropout"),
    ],
)
def test_unsupported_config_is_refused_by_name(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"config.json field {field}="):
        hf.config_from_hf({**BASE_HF, **changes})


def test_config_mapping() -> None:
    assert hf.config_from_hf(BASE_HF) == LLAMA
    default_rope = {
        **BASE_HF,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": 7.0},
    }
    assert hf.config_from_hf(default_rope).rope_theta == 7.0
    mha = {k: v for k, v in BASE_HF.items() if k != "num_key_value_heads"}
    assert hf.config_from_hf(mha).attention_type == "mha"
    assert hf.config_from_hf({**BASE_HF, "num_key_value_heads": 1}).attention_type == "mqa"
    with pytest.raises(ValueError, match="no 'hidden_size'"):
        hf.config_from_hf({k: v for k, v in BASE_HF.items() if k != "hidden_size"})
    with pytest.raises(ValueError, match="capacity"):
        hf.config_to_hf(MIXTRAL.replace(capacity=4))


def test_bad_checkpoints_and_no_overwrite(tmp_path: Path) -> None:
    params = _params(LLAMA)
    tensors = hf.params_to_hf(params, LLAMA)
    with pytest.raises(ValueError, match="no place for.*extra"):
        hf.params_from_hf({**tensors, "model.extra.weight": np.zeros(1, np.float32)}, LLAMA)
    partial = {k: v for k, v in tensors.items() if "layers.1.mlp.down" not in k}
    with pytest.raises(ValueError, match="no tensor 'model.layers.1.mlp.down_proj.weight'"):
        hf.params_from_hf(partial, LLAMA)
    with pytest.raises(ValueError, match="shape"):
        hf.params_from_hf(tensors, LLAMA.replace(ffn_latent_dim=32))
    target = tmp_path / "m"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError):
        hf.save_hf(target, LLAMA, params)
    assert (target / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize("config", [LLAMA, MIXTRAL], ids=["llama", "mixtral"])
def test_transformers_logits_match(config: LMConfig, tmp_path: Path) -> None:
    import torch
    import transformers  # a pinned dev dependency: the outside reference for the HF layout

    params = _params(config, seed=3)
    hf.save_hf(tmp_path / "m", config, params)
    cls = transformers.MixtralForCausalLM if config.use_moe else transformers.LlamaForCausalLM
    model = cls.from_pretrained(tmp_path / "m", dtype=torch.float32).eval()  # transformers >= 4.56
    with torch.no_grad():
        theirs = model(torch.from_numpy(IDS).long()).logits.numpy()
    ours, _ = LM(config).apply({"params": params}, IDS)
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-5, rtol=1e-5)
