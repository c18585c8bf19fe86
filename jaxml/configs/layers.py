"""Layer configs: attention (MHA/MQA/GQA) and the feed-forward slot (MLP, SwiGLU, MoE)."""

from __future__ import annotations

from dataclasses import dataclass

from jaxml.configs._validate import (
    Config,
    check_choice,
    check_positive,
    check_range,
    fail,
)

ATTENTION_TYPES = ("mha", "mqa", "gqa")
ATTENTION_KERNELS = ("auto", "dense", "blockwise", "fused", "cudnn")
ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "tanh", "silu")
FFN_KINDS = ("mlp", "swiglu")
MAX_LOSS_COEF = 1e6  # larger aux-loss weights overflow float32 losses at init


@dataclass(frozen=True)
class AttentionConfig(Config):
    """Self- or cross-attention serving MHA, MQA and GQA.

    `num_groups` is the number of key/value heads: mha ⇒ `num_heads`, mqa ⇒ 1,
    gqa ⇒ the given value (default `num_heads // 2`), which must divide `num_heads`.
    `kernel` names the implementation: `dense` (explicit masked softmax; serves every call),
    `blockwise` (`flash_attention.causal_attention`: causal self-attention without cache, mask,
    padding or weights, over whole blocks; any other call is an error), `auto` (blockwise
    exactly where it applies, dense elsewhere; the same numbers either way), `fused`
    (`jax.nn.dot_product_attention` with jax's default implementation, XLA in jax 0.10.2;
    every call but `return_weights`; its softmax is float32 even for float64 inputs) or
    `cudnn` (the same function forced onto cuDNN flash attention: needs a CUDA GPU and
    float16/bfloat16 inputs; anything else is an error, never a fallback).
    """

    embed_dim: int
    num_heads: int
    attention_type: str = "mha"
    num_groups: int | None = None
    apply_causal_mask: bool = False
    use_rope: bool = False
    rope_theta: float = 10000.0
    use_bias: bool = True
    kernel: str = "auto"

    def validate(self) -> None:
        check_positive(self, "embed_dim", "num_heads")
        check_choice(self, "attention_type", ATTENTION_TYPES)
        check_choice(self, "kernel", ATTENTION_KERNELS)
        if self.embed_dim % self.num_heads:
            fail(
                self,
                "embed_dim",
                self.embed_dim,
                f"must be divisible by num_heads={self.num_heads}",
            )
        implied = {"mha": self.num_heads, "mqa": 1}.get(self.attention_type)
        groups = self.num_groups
        if implied is not None:
            if groups is not None and groups != implied:
                fail(
                    self,
                    "num_groups",
                    groups,
                    f"attention_type={self.attention_type!r} implies num_groups={implied} "
                    "(use attention_type='gqa' to choose the number of groups)",
                )
            groups = implied
        elif groups is None:
            groups = max(1, self.num_heads // 2)
        object.__setattr__(self, "num_groups", groups)
        check_positive(self, "num_groups")
        if self.num_heads % groups:
            fail(self, "num_groups", groups, f"must divide num_heads={self.num_heads}")
        if self.use_rope and self.head_dim % 2:
            fail(
                self,
                "use_rope",
                True,
                f"rotary embedding needs an even head_dim, got {self.head_dim}",
            )
        if not self.rope_theta > 0:
            fail(self, "rope_theta", self.rope_theta, "must be > 0")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def num_kv_heads(self) -> int:
        """Key/value heads, i.e. `num_groups` after resolution."""
        assert self.num_groups is not None
        return self.num_groups


@dataclass(frozen=True)
class FFNConfig(Config):
    """Position-wise feed-forward network: `mlp` (two layers) or `swiglu`, or a Mixture of Experts.

    The Mixture-of-Experts fields (`use_moe`, `num_experts`, `capacity`, `alpha`, `topk`) keep
    the names users of the original framework know; the MoE layer reads them. Each expert is an
    FFN of this config's `kind`/`activation`/`ffn_latent_dim`. Capacity (slots per expert) is
    `capacity` (absolute) or `ceil(topk · tokens / num_experts · capacity_factor)`; with neither
    set the layer is dropless (capacity = tokens, nothing can overflow). `overflow_policy` says
    what happens to a token choice beyond capacity: `drop` (zero output, the residual carries the
    token) or `overflow_expert` (an extra dense expert processes it). `alpha` weights the
    load-balancing loss, `z_loss_coef` the router z-loss. `norm_topk_prob` renormalises the
    selected router probabilities to sum to 1 (Mixtral; with topk=1 the weight is then 1 and the
    router learns only from the aux losses — set False for Switch-style raw probabilities).
    `dispatch` picks how tokens move to expert slots and back, with identical results: `gather`
    (index tables, `O(tokens · embed_dim)`) or `einsum` (GShard one-hot masks
    `[tokens, num_experts, capacity]`, `O(tokens² · topk · embed_dim)` at a fixed capacity factor);
    `gather` was as fast or faster at every size measured on CPU (see `experiments.bench_moe`).
    """

    embed_dim: int
    ffn_latent_dim: int
    activation: str = "relu"
    kind: str = "mlp"
    use_bias: bool = True
    use_moe: bool = False
    num_experts: int = 8
    topk: int = 2
    capacity: int | None = None
    capacity_factor: float | None = None
    alpha: float = 0.01
    z_loss_coef: float = 0.0
    overflow_policy: str = "drop"
    norm_topk_prob: bool = True
    dispatch: str = "gather"

    def validate(self) -> None:
        check_positive(self, "embed_dim", "ffn_latent_dim", "num_experts", "topk", "capacity")
        check_choice(self, "activation", ACTIVATIONS)
        check_choice(self, "kind", FFN_KINDS)
        if self.topk > self.num_experts:
            fail(self, "topk", self.topk, f"must be <= num_experts={self.num_experts}")
        if self.capacity_factor is not None and not self.capacity_factor > 0:
            fail(self, "capacity_factor", self.capacity_factor, "must be a finite number > 0")
        if self.capacity is not None and self.capacity_factor is not None:
            fail(
                self, "capacity", self.capacity, "set either capacity or capacity_factor, not both"
            )
        check_range(self, "alpha", 0.0, MAX_LOSS_COEF)
        check_range(self, "z_loss_coef", 0.0, MAX_LOSS_COEF)
        check_choice(self, "overflow_policy", ("drop", "overflow_expert"))
        if (
            self.overflow_policy == "overflow_expert"
            and self.capacity is None
            and self.capacity_factor is None
        ):
            fail(
                self,
                "overflow_policy",
                self.overflow_policy,
                "needs capacity or capacity_factor (without them the layer is dropless and "
                "nothing ever overflows)",
            )
        check_choice(self, "dispatch", ("gather", "einsum"))

    def expert_capacity(self, num_tokens: int) -> int:
        """Slots per expert for a batch of `num_tokens` tokens, in `[1, num_tokens]`.

        An expert receives each token at most once, so more than `num_tokens` slots never help.
        """
        if self.capacity is not None:
            slots = self.capacity
        elif self.capacity_factor is not None:
            slots = int(-(-(self.topk * num_tokens * self.capacity_factor) // self.num_experts))
        else:
            slots = num_tokens
        return max(1, min(slots, num_tokens))


__all__ = ["ACTIVATIONS", "ATTENTION_TYPES", "FFN_KINDS", "AttentionConfig", "FFNConfig"]
