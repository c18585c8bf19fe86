"""Hugging Face Llama / Mixtral checkpoint directories <-> `LMConfig` + jaxml LM params.

numpy + safetensors only (no jax, no torch, no transformers), so it serves jaxml, torchref and the
CLIs. A directory holds `config.json` and `model.safetensors`, or shards
`model-0000X-of-0000N.safetensors` listed by `model.safetensors.index.json` (`weight_map`).

Tensor names (`[out, in]` like torch Linear; jaxml Dense kernels are `[in, out]`, so transposed):

    model.embed_tokens.weight                        embed/embedding           (not transposed)
    model.layers.N.input_layernorm.weight            layers_N/attn_norm/scale
    model.layers.N.self_attn.{q,k,v,o}_proj.weight   layers_N/attn/{q,k,v,o}_proj/kernel
    model.layers.N.post_attention_layernorm.weight   layers_N/ffn_norm/scale
    model.layers.N.mlp.{gate,up,down}_proj.weight    layers_N/ffn/{w1,w3,w2}/kernel
    model.layers.N.block_sparse_moe.…                layers_N/ffn/{gate,w1,w2,w3} (Mixtral, see
                                                     `jaxml.interop.mixtral`)
    model.norm.weight                                norm/scale
    lm_head.weight                                   lm_head/kernel (absent when tied)

RoPE: Hugging Face stores q/k projections for the rotate-half convention, which is the one
`jaxml.layers.positions.apply_rope` uses, so no row permutation is applied in either direction.
Configs with features the LM does not implement (rope scaling, sliding window, biases, another
activation, a head_dim other than hidden_size / heads, dropout, router jitter) are refused with a
ValueError naming the `config.json` field, instead of loading a model that computes differently.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from jaxml.configs.lm import LMConfig
from jaxml.interop.mixtral import moe_from_mixtral, moe_to_mixtral

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
MODEL_TYPES = ("llama", "mistral", "mixtral")
_ATTN = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "o_proj"}
_MLP = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}
_NORMS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
_DERIVED = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")  # old buffers


def _refuse(field: str, value: Any, why: str) -> None:
    raise ValueError(f"config.json field {field}={value!r} is not supported: {why}")


def _required(hf: Mapping[str, Any], field: str) -> Any:
    if field not in hf:
        raise ValueError(f"config.json has no {field!r} (required for a Llama/Mixtral model)")
    return hf[field]


def _rope_theta(hf: Mapping[str, Any]) -> float:
    """`rope_theta`, from the top level or a `rope_parameters` dict (newer transformers)."""
    params = hf.get("rope_parameters")
    scaling = hf.get("rope_scaling")
    for field, value in (("rope_scaling", scaling), ("rope_parameters", params)):
        if value is not None and dict(value).get("rope_type", dict(value).get("type")) not in (
            None,
            "default",
        ):
            _refuse(field, value, "only plain RoPE is implemented (no linear/dynamic/yarn/llama3)")
    if params is not None and "rope_theta" in params:
        return float(params["rope_theta"])
    return float(hf.get("rope_theta", 10000.0))


def config_from_hf(hf: Mapping[str, Any], **changes: Any) -> LMConfig:
    """`config.json` contents -> `LMConfig` (`changes`, e.g. `dtype`, override the result)."""
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        _refuse("model_type", model_type, f"supported model types are {', '.join(MODEL_TYPES)}")
    refusals = {
        "attention_bias": (bool(hf.get("attention_bias", False)), "the LM has no biases"),
        "mlp_bias": (bool(hf.get("mlp_bias", False)), "the LM has no biases"),
        "hidden_act": (hf.get("hidden_act", "silu") != "silu", "the FFN is SwiGLU (silu)"),
        "sliding_window": (
            hf.get("sliding_window") is not None,
            "training attention is full causal (no sliding window)",
        ),
        "attention_dropout": (bool(hf.get("attention_dropout", 0.0)), "the LM has no dropout"),
        "router_jitter_noise": (bool(hf.get("router_jitter_noise", 0.0)), "no router noise"),
    }
    for field, (unsupported, why) in refusals.items():
        if unsupported:
            _refuse(field, hf.get(field), why)
    embed_dim = int(_required(hf, "hidden_size"))
    num_heads = int(_required(hf, "num_attention_heads"))
    head_dim = hf.get("head_dim")
    if head_dim is not None and head_dim * num_heads != embed_dim:
        _refuse("head_dim", head_dim, "must equal hidden_size / num_attention_heads")
    num_kv = int(hf.get("num_key_value_heads") or num_heads)
    attention_type = "mha" if num_kv == num_heads else "mqa" if num_kv == 1 else "gqa"
    fields: dict[str, Any] = dict(
        vocab_size=int(_required(hf, "vocab_size")),
        embed_dim=embed_dim,
        num_layers=int(_required(hf, "num_hidden_layers")),
        num_heads=num_heads,
        attention_type=attention_type,
        num_groups=num_kv if attention_type == "gqa" else None,
        ffn_latent_dim=int(_required(hf, "intermediate_size")),
        rope_theta=_rope_theta(hf),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        max_seq_len=int(hf.get("max_position_embeddings", 2048)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )
    if model_type == "mixtral":
        fields.update(
            use_moe=True,
            num_experts=int(_required(hf, "num_local_experts")),
            topk=int(hf.get("num_experts_per_tok", 2)),
            alpha=float(hf.get("router_aux_loss_coef", 0.001)),
        )
    return LMConfig(**{**fields, **changes})


def config_to_hf(config: LMConfig, torch_dtype: str = "float32") -> dict[str, Any]:
    """`LMConfig` -> `config.json` contents (Llama, or Mixtral when `use_moe`).

    Raises ValueError for what Mixtral cannot express: a capacity-limited (dropping) MoE.
    """
    hf: dict[str, Any] = {
        "architectures": ["MixtralForCausalLM" if config.use_moe else "LlamaForCausalLM"],
        "model_type": "mixtral" if config.use_moe else "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.embed_dim,
        "intermediate_size": config.ffn_latent_dim,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": None,
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "torch_dtype": torch_dtype,
    }
    if not config.use_moe:
        hf["mlp_bias"] = False
        return hf
    if config.capacity is not None or config.capacity_factor is not None:
        raise ValueError(
            "LMConfig.capacity / capacity_factor: Mixtral routing is dropless; "
            "a capacity-limited MoE cannot be saved in the Mixtral format"
        )
    hf.update(
        num_local_experts=config.num_experts,
        num_experts_per_tok=config.topk,
        router_aux_loss_coef=config.alpha,
        sliding_window=None,
        output_router_logits=False,
    )
    return hf


def _t(array: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(array).T)


def params_to_hf(params: Mapping[str, Any], config: LMConfig) -> dict[str, np.ndarray]:
    """jaxml LM params (`{"params": tree}` or the tree) -> HF tensor dict (exact copies)."""
    tree = params["params"] if set(params) == {"params"} else params
    out = {
        "model.embed_tokens.weight": np.ascontiguousarray(tree["embed"]["embedding"]),
        "model.norm.weight": np.ascontiguousarray(tree["norm"]["scale"]),
    }
    if not config.tie_embeddings:
        out["lm_head.weight"] = _t(tree["lm_head"]["kernel"])
    for n in range(config.num_layers):
        layer, prefix = tree[f"layers_{n}"], f"model.layers.{n}."
        for hf_name, name in _NORMS.items():
            out[f"{prefix}{hf_name}.weight"] = np.ascontiguousarray(layer[name]["scale"])
        for hf_name, name in _ATTN.items():
            out[f"{prefix}self_attn.{hf_name}.weight"] = _t(layer["attn"][name]["kernel"])
        if config.use_moe:
            out.update(moe_to_mixtral(layer["ffn"], prefix))
        else:
            for hf_name, name in _MLP.items():
                out[f"{prefix}mlp.{hf_name}.weight"] = _t(layer["ffn"][name]["kernel"])
    return out


class _Tensors:
    """Reads tensors by name and remembers which were read, so leftovers can be reported."""

    def __init__(self, tensors: Mapping[str, np.ndarray]) -> None:
        self.tensors = tensors
        self.used: set[str] = set()

    def get(self, key: str, shape: tuple[int, ...], transpose: bool = False) -> np.ndarray:
        if key not in self.tensors:
            raise ValueError(f"checkpoint has no tensor {key!r}")
        self.used.add(key)
        array = np.asarray(self.tensors[key], np.float32)
        array = array.T if transpose else array
        if array.shape != shape:
            raise ValueError(f"{key!r}: shape {array.shape} (as jaxml) != expected {shape}")
        return np.ascontiguousarray(array)

    def unused(self) -> list[str]:
        return sorted(k for k in set(self.tensors) - self.used if not _DERIVED.match(k))


def params_from_hf(tensors: Mapping[str, np.ndarray], config: LMConfig) -> dict[str, Any]:
    """HF tensor dict -> jaxml LM params tree (float32 numpy leaves, bit-exact for float32 files).

    Raises ValueError on a missing tensor, a shape that does not fit `config`, or a tensor the
    model has no place for.
    """
    src = _Tensors(tensors)
    d, f, v = config.embed_dim, config.ffn_latent_dim, config.vocab_size
    assert f is not None
    q_out, kv_out = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    attn_shapes = {"q_proj": (d, q_out), "k_proj": (d, kv_out), "v_proj": (d, kv_out)}
    attn_shapes["o_proj"] = (q_out, d)
    mlp_shapes = {"w1": (d, f), "w3": (d, f), "w2": (f, d)}
    tree: dict[str, Any] = {
        "embed": {"embedding": src.get("model.embed_tokens.weight", (v, d))},
        "norm": {"scale": src.get("model.norm.weight", (d,))},
    }
    if not config.tie_embeddings:
        tree["lm_head"] = {"kernel": src.get("lm_head.weight", (d, v), transpose=True)}
    for n in range(config.num_layers):
        prefix = f"model.layers.{n}."
        layer: dict[str, Any] = {
            name: {"scale": src.get(f"{prefix}{hf_name}.weight", (d,))}
            for hf_name, name in _NORMS.items()
        }
        layer["attn"] = {
            name: {"kernel": src.get(f"{prefix}self_attn.{name}.weight", shape, transpose=True)}
            for name, shape in attn_shapes.items()
        }
        if config.use_moe:
            moe = moe_from_mixtral(tensors, prefix)
            src.used.update(k for k in tensors if k.startswith(prefix + "block_sparse_moe."))
            expected = (config.num_experts, d, f)
            if moe["w1"].shape != expected:
                raise ValueError(
                    f"{prefix}block_sparse_moe experts give {moe['w1'].shape}, expected {expected}"
                )
            layer["ffn"] = moe
        else:
            layer["ffn"] = {
                name: {"kernel": src.get(f"{prefix}mlp.{hf}.weight", mlp_shapes[name], True)}
                for hf, name in _MLP.items()
            }
        tree[f"layers_{n}"] = layer
    unused = src.unused()
    if unused:
        raise ValueError(f"checkpoint tensors the model has no place for: {unused[:8]}")
    return tree


def read_tensors(directory: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """All tensors of `model.safetensors` or of the shards listed in the index."""
    root = Path(directory)
    if (root / INDEX_FILE).exists():
        weight_map = json.loads((root / INDEX_FILE).read_text())["weight_map"]
        tensors: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            tensors.update(safetensors.numpy.load_file(root / shard))
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise ValueError(f"{INDEX_FILE} lists tensors no shard holds: {missing[:8]}")
        return tensors
    if (root / SINGLE_FILE).exists():
        return safetensors.numpy.load_file(root / SINGLE_FILE)
    raise FileNotFoundError(f"{root} holds neither {SINGLE_FILE} nor {INDEX_FILE}")


def load_hf(directory: str | os.PathLike[str], **changes: Any) -> tuple[LMConfig, dict[str, Any]]:
    """A Hugging Face Llama/Mixtral directory -> `(LMConfig, params tree)`; see the module docstring."""
    root = Path(directory)
    if not (root / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{root} has no {CONFIG_FILE}")
    config = config_from_hf(json.loads((root / CONFIG_FILE).read_text()), **changes)
    return config, params_from_hf(read_tensors(root), config)


def save_hf(
    directory: str | os.PathLike[str],
    config: LMConfig,
    params: Mapping[str, Any],
    *,
    max_shard_bytes: int | None = None,
) -> list[Path]:
    """Write `config.json` and the weights (float32) as a Hugging Face directory.

    With `max_shard_bytes`, tensors are split in order into `model-0000X-of-0000N.safetensors`
    files of at most that size (a larger single tensor gets its own shard) plus the index.
    Refuses a non-empty `directory` (nothing is overwritten). Returns the files written.
    """
    root = Path(directory)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root} exists and is not an empty directory; refusing to overwrite")
    hf_config = config_to_hf(config)
    tensors = params_to_hf(params, config)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for key, array in tensors.items():
        if max_shard_bytes is not None and shards[-1] and size + array.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = array
        size += array.nbytes
    root.mkdir(parents=True, exist_ok=True)
    written = [root / CONFIG_FILE]
    written[0].write_text(json.dumps(hf_config, indent=2) + "\n")
    metadata = {"format": "pt"}  # transformers refuses safetensors files without it
    if max_shard_bytes is None:
        safetensors.numpy.save_file(tensors, root / SINGLE_FILE, metadata=metadata)
        return [*written, root / SINGLE_FILE]
    weight_map = {}
    for index, shard in enumerate(shards, start=1):
        name = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        safetensors.numpy.save_file(shard, root / name, metadata=metadata)
        weight_map.update(dict.fromkeys(shard, name))
        written.append(root / name)
    index_doc = {
        "metadata": {"total_size": sum(a.nbytes for a in tensors.values())},
        "weight_map": weight_map,
    }
    (root / INDEX_FILE).write_text(json.dumps(index_doc, indent=2) + "\n")
    return [*written, root / INDEX_FILE]
