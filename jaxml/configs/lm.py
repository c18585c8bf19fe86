"""`LMConfig`: the Llama-style decoder-only LM (jax-free, torch-free, shared by jaxml and torchref).

Names follow the project's vocabulary; `SOTAConfig(...)` accepts the original framework's names
(`d_model`, `d_ff`, `n_heads`, `n_layers`, `n_kv_heads`, `max_seq_length`) and returns an
`LMConfig`. The attention and FFN sub-configs are derived (`attention_config()`, `ffn_config()`),
so their validation runs here and errors name the `LMConfig` field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jaxml.configs._validate import Config, check_choice, check_positive, check_range
from jaxml.configs.layers import ATTENTION_KERNELS, AttentionConfig, FFNConfig

DTYPES = ("float32", "bfloat16")
FFN_MULTIPLE_OF = 256  # Llama rounds the SwiGLU width 8/3 · embed_dim up to a multiple of 256


def llama_ffn_latent_dim(embed_dim: int, multiple_of: int = FFN_MULTIPLE_OF) -> int:
    """Llama's default SwiGLU width: `int(8 · embed_dim / 3)` rounded up to `multiple_of`."""
    hidden = int(8 * embed_dim / 3)
    return multiple_of * -(-hidden // multiple_of)


@dataclass(frozen=True)
class LMConfig(Config):
    """Decoder-only LM: embedding -> `num_layers` pre-norm blocks -> RMSNorm -> output projection.

    Block: `x += attn(rms_norm(x))` (RoPE, mha/mqa/gqa with `num_groups` key/value heads, no
    biases), `x += ffn(rms_norm(x))` (SwiGLU of width `ffn_latent_dim`, default
    `llama_ffn_latent_dim(embed_dim)`; a Mixture of SwiGLU experts when `use_moe`, with the MoE
    fields `num_experts`, `topk`, `capacity` / `capacity_factor` (neither: dropless), `alpha`,
    `z_loss_coef`). `tie_embeddings` reuses the embedding as the output projection.
    `dtype` is the compute dtype: `bfloat16` runs matmuls in bfloat16 while params, norms,
    softmax, the router and the logits stay float32. `max_seq_len` bounds positions (and the
    decode cache). `attention_kernel` is the attention layer's `kernel` (`auto`: the blockwise
    causal kernel for training, the dense one with a cache; `cudnn`: cuDNN flash attention on a
    CUDA GPU, needs `dtype="bfloat16"`; see `AttentionConfig`).
    """

    vocab_size: int
    embed_dim: int
    num_layers: int
    num_heads: int
    attention_type: str = "gqa"
    num_groups: int | None = None
    ffn_latent_dim: int | None = None
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    max_seq_len: int = 2048
    tie_embeddings: bool = False
    use_moe: bool = False
    num_experts: int = 8
    topk: int = 2
    capacity: int | None = None
    capacity_factor: float | None = None
    alpha: float = 0.01
    z_loss_coef: float = 0.0
    dtype: str = "float32"
    attention_kernel: str = "auto"

    def validate(self) -> None:
        check_positive(
            self,
            "vocab_size",
            "embed_dim",
            "num_layers",
            "num_heads",
            "max_seq_len",
            "ffn_latent_dim",
        )
        if self.ffn_latent_dim is None:
            object.__setattr__(self, "ffn_latent_dim", llama_ffn_latent_dim(self.embed_dim))
        check_range(self, "norm_eps", 0.0, 1.0, "()")
        check_choice(self, "dtype", DTYPES)
        check_choice(self, "attention_kernel", ATTENTION_KERNELS)
        attention = self._renamed(lambda: self.attention_config())
        object.__setattr__(self, "num_groups", attention.num_groups)
        self._renamed(lambda: self.ffn_config())

    def _renamed(self, build: Any) -> Any:
        """Run a sub-config constructor; its errors name the `LMConfig` field instead."""
        try:
            return build()
        except ValueError as error:
            message = str(error)
            for sub in ("AttentionConfig.", "FFNConfig."):
                message = message.replace(sub, "LMConfig.", 1)
            raise ValueError(message) from None

    @property
    def d_model(self) -> int:
        """The original framework's name for `embed_dim`."""
        return self.embed_dim

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def num_kv_heads(self) -> int:
        assert self.num_groups is not None
        return self.num_groups

    def attention_config(self) -> AttentionConfig:
        """Causal, RoPE, bias-free attention of every block."""
        return AttentionConfig(
            self.embed_dim,
            self.num_heads,
            attention_type=self.attention_type,
            num_groups=self.num_groups,
            apply_causal_mask=True,
            use_rope=True,
            rope_theta=self.rope_theta,
            use_bias=False,
            kernel=self.attention_kernel,
        )

    def ffn_config(self) -> FFNConfig:
        """Bias-free SwiGLU (or a dropless/capacity MoE of SwiGLU experts, Mixtral's routing)."""
        assert self.ffn_latent_dim is not None
        return FFNConfig(
            self.embed_dim,
            self.ffn_latent_dim,
            activation="silu",
            kind="swiglu",
            use_bias=False,
            use_moe=self.use_moe,
            num_experts=self.num_experts,
            topk=self.topk,
            capacity=self.capacity,
            capacity_factor=self.capacity_factor,
            alpha=self.alpha,
            z_loss_coef=self.z_loss_coef,
            norm_topk_prob=True,
        )


ORIGINAL_NAMES = {
    "d_model": "embed_dim",
    "d_ff": "ffn_latent_dim",
    "n_heads": "num_heads",
    "n_layers": "num_layers",
    "n_kv_heads": "num_groups",
    "max_seq_length": "max_seq_len",
}


def SOTAConfig(**fields: Any) -> LMConfig:  # noqa: N802 - the original framework's class name
    """An `LMConfig` from the original `SOTAConfig` names (see `ORIGINAL_NAMES`).

    `n_kv_heads` selects grouped-query attention with that many key/value heads. A non-zero
    `dropout` is refused (the LM has no dropout); `dropout=0` is accepted and ignored.
    """
    dropout = fields.pop("dropout", 0.0)
    if dropout:
        raise ValueError(
            f"SOTAConfig.dropout={dropout!r} is invalid: the LM has no dropout; use 0.0"
        )
    for old, new in ORIGINAL_NAMES.items():
        if old in fields and new in fields:
            raise ValueError(f"SOTAConfig: both {old!r} and {new!r} given; use one")
    renamed = {ORIGINAL_NAMES.get(key, key): value for key, value in fields.items()}
    if "num_groups" in renamed and "attention_type" not in renamed:
        renamed["attention_type"] = "gqa"
    return LMConfig(**renamed)
