"""Frozen, validated configs shared by jaxml, torchref and every CLI.

One vocabulary everywhere: `embed_dim`, `num_heads`, `num_groups`, `ffn_latent_dim`,
`attention_type`, `apply_causal_mask`, `use_moe`, `num_experts`, `capacity`, `alpha`, `topk`,
`use_kv_cache`, `max_seq_len`. Configs are hashable, so they can be static `jax.jit` arguments.
This module imports neither jax nor torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

ATTENTION_TYPES = ("mha", "mqa", "gqa")
ATTENTION_KERNELS = ("auto", "dense", "blockwise")
ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "tanh", "silu")
FFN_KINDS = ("mlp", "swiglu")


def _fail(cls: str, field: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{cls}.{field}={value!r} is invalid: {allowed}")


def _check_positive(cls: str, **fields: Any) -> None:
    for name, value in fields.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            _fail(cls, name, value, "must be a positive integer")


def _check_choice(cls: str, field: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        _fail(cls, field, value, f"allowed values are {', '.join(allowed)}")


@dataclass(frozen=True)
class AttentionConfig:
    """Self- or cross-attention serving MHA, MQA and GQA.

    `num_groups` is the number of key/value heads: mha ⇒ `num_heads`, mqa ⇒ 1,
    gqa ⇒ the given value (default `num_heads // 2`), which must divide `num_heads`.
    `kernel` names the implementation: `dense` (explicit masked softmax; serves every call),
    `blockwise` (`flash_attention.causal_attention`: causal self-attention without cache, mask,
    padding or weights, over whole blocks; any other call is an error) or `auto` (blockwise
    exactly where it applies, dense elsewhere; the same numbers either way).
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

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_positive(name, embed_dim=self.embed_dim, num_heads=self.num_heads)
        _check_choice(name, "attention_type", self.attention_type, ATTENTION_TYPES)
        _check_choice(name, "kernel", self.kernel, ATTENTION_KERNELS)
        if self.embed_dim % self.num_heads:
            _fail(
                name,
                "embed_dim",
                self.embed_dim,
                f"must be divisible by num_heads={self.num_heads}",
            )
        implied = {"mha": self.num_heads, "mqa": 1}.get(self.attention_type)
        groups = self.num_groups
        if implied is not None:
            if groups is not None and groups != implied:
                _fail(
                    name,
                    "num_groups",
                    groups,
                    f"attention_type={self.attention_type!r} implies num_groups={implied} "
                    "(use attention_type='gqa' to choose the number of groups)",
                )
            groups = implied
        elif groups is None:
            groups = max(1, self.num_heads // 2)
        _check_positive(name, num_groups=groups)
        assert groups is not None
        if self.num_heads % groups:
            _fail(name, "num_groups", groups, f"must divide num_heads={self.num_heads}")
        if self.use_rope and self.head_dim % 2:
            _fail(
                name,
                "use_rope",
                True,
                f"rotary embedding needs an even head_dim, got {self.head_dim}",
            )
        if not self.rope_theta > 0:
            _fail(name, "rope_theta", self.rope_theta, "must be > 0")
        object.__setattr__(self, "num_groups", groups)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def num_kv_heads(self) -> int:
        """Key/value heads, i.e. `num_groups` after resolution."""
        assert self.num_groups is not None
        return self.num_groups

    def replace(self, **changes: Any) -> AttentionConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class FFNConfig:
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

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_positive(name, embed_dim=self.embed_dim, ffn_latent_dim=self.ffn_latent_dim)
        _check_choice(name, "activation", self.activation, ACTIVATIONS)
        _check_choice(name, "kind", self.kind, FFN_KINDS)
        _check_positive(name, num_experts=self.num_experts, topk=self.topk)
        if self.topk > self.num_experts:
            _fail(name, "topk", self.topk, f"must be <= num_experts={self.num_experts}")
        if self.capacity is not None:
            _check_positive(name, capacity=self.capacity)
        number = lambda v: isinstance(v, int | float) and not isinstance(v, bool)  # noqa: E731
        cf = self.capacity_factor
        if cf is not None and not (number(cf) and 0 < cf < float("inf")):
            _fail(name, "capacity_factor", cf, "must be a finite number > 0")
        if self.capacity is not None and self.capacity_factor is not None:
            _fail(
                name, "capacity", self.capacity, "set either capacity or capacity_factor, not both"
            )
        for field in ("alpha", "z_loss_coef"):
            value = getattr(self, field)
            if not (number(value) and 0 <= value < float("inf")):
                _fail(name, field, value, "must be a finite number >= 0")
        _check_choice(name, "overflow_policy", self.overflow_policy, ("drop", "overflow_expert"))
        if (
            self.overflow_policy == "overflow_expert"
            and self.capacity is None
            and self.capacity_factor is None
        ):
            _fail(
                name,
                "overflow_policy",
                self.overflow_policy,
                "needs capacity or capacity_factor (without them the layer is dropless and "
                "nothing ever overflows)",
            )
        for field in ("use_moe", "use_bias", "norm_topk_prob"):
            if not isinstance(getattr(self, field), bool):
                _fail(name, field, getattr(self, field), "must be True or False")
        _check_choice(name, "dispatch", self.dispatch, ("gather", "einsum"))

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

    def replace(self, **changes: Any) -> FFNConfig:
        return dataclasses.replace(self, **changes)


def parse_latent_dims(value: str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """`"128,64,32"` (the CLI form) or a sequence of ints -> `(128, 64, 32)`; `""` -> `()`."""
    if not isinstance(value, str):
        return tuple(value)
    try:
        return tuple(int(p) for p in value.split(",") if p.strip())
    except ValueError:
        raise ValueError(
            f"RegressorConfig.latent_dims={value!r} is invalid: must be comma-separated integers"
        ) from None


@dataclass(frozen=True)
class RegressorConfig:
    """`LinearRegressor` / `MLPRegressor`: `[batch, input_dim] -> [batch, output_dim]`.

    `latent_dims` are the MLP's hidden widths (`"128,64,32"` is accepted and stored as a tuple);
    the linear model has none. `activation` is the MLP's hidden activation.
    """

    input_dim: int
    output_dim: int = 1
    latent_dims: tuple[int, ...] = ()
    activation: str = "relu"

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_positive(name, input_dim=self.input_dim, output_dim=self.output_dim)
        dims = parse_latent_dims(self.latent_dims)
        for width in dims:
            if not isinstance(width, int) or isinstance(width, bool) or width < 1:
                _fail(
                    name, "latent_dims", self.latent_dims, "every width must be a positive integer"
                )
        object.__setattr__(self, "latent_dims", dims)
        _check_choice(name, "activation", self.activation, ACTIVATIONS)

    def replace(self, **changes: Any) -> RegressorConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TransformerConfig:
    """The classic post-norm transformer family (regression, autoregressive, encoder-decoder).

    Keeps the original framework's names. `num_layers` is the depth of the encoder-only models;
    `num_encoder_layers` / `num_decoder_layers` (default `num_layers`) that of `EncoderDecoder`.
    `apply_causal_mask` applies to the regression `TransformerModel` only: the autoregressive
    model and the decoder are always causal, the encoder never. `num_groups` follows
    `AttentionConfig`. `ffn_config` (default: a ReLU MLP of width `ffn_latent_dim`) fills every
    FFN slot; its `use_moe` switches them to Mixture-of-Experts. `max_seq_len` bounds the
    sinusoidal position table.
    """

    input_dim: int
    embed_dim: int
    ffn_latent_dim: int
    num_heads: int
    output_dim: int = 1
    num_layers: int = 2
    num_encoder_layers: int | None = None
    num_decoder_layers: int | None = None
    attention_type: str = "mha"
    num_groups: int | None = None
    apply_causal_mask: bool = False
    max_seq_len: int = 128
    ffn_config: FFNConfig | None = None
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_positive(
            name,
            input_dim=self.input_dim,
            embed_dim=self.embed_dim,
            ffn_latent_dim=self.ffn_latent_dim,
            num_heads=self.num_heads,
            output_dim=self.output_dim,
            num_layers=self.num_layers,
            max_seq_len=self.max_seq_len,
        )
        for field in ("num_encoder_layers", "num_decoder_layers"):
            if getattr(self, field) is not None:
                _check_positive(name, **{field: getattr(self, field)})
        if self.embed_dim % 2:
            _fail(name, "embed_dim", self.embed_dim, "must be even (sinusoidal positions)")
        if not self.layer_norm_eps > 0:
            _fail(name, "layer_norm_eps", self.layer_norm_eps, "must be > 0")
        self.attention_config(causal=False)  # validates attention_type / num_groups / num_heads
        ffn = self.ffn_config
        if ffn is not None:
            if not isinstance(ffn, FFNConfig):
                _fail(name, "ffn_config", ffn, "must be an FFNConfig or None")
            if ffn.embed_dim != self.embed_dim:
                _fail(
                    name, "ffn_config", ffn, f"its embed_dim must equal embed_dim={self.embed_dim}"
                )
            if ffn.ffn_latent_dim != self.ffn_latent_dim:
                _fail(
                    name,
                    "ffn_config",
                    ffn,
                    f"its ffn_latent_dim must equal ffn_latent_dim={self.ffn_latent_dim}",
                )

    @property
    def ffn(self) -> FFNConfig:
        """The FFN every block uses (`ffn_config`, or a ReLU MLP of width `ffn_latent_dim`)."""
        return self.ffn_config or FFNConfig(self.embed_dim, self.ffn_latent_dim)

    @property
    def encoder_depth(self) -> int:
        return self.num_layers if self.num_encoder_layers is None else self.num_encoder_layers

    @property
    def decoder_depth(self) -> int:
        return self.num_layers if self.num_decoder_layers is None else self.num_decoder_layers

    def attention_config(self, causal: bool) -> AttentionConfig:
        return AttentionConfig(
            self.embed_dim,
            self.num_heads,
            attention_type=self.attention_type,
            num_groups=self.num_groups,
            apply_causal_mask=causal,
        )

    def replace(self, **changes: Any) -> TransformerConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class CNNConfig:
    """`CNNClassifier` for small images: per entry of `channels` a conv block
    (`kernel_size` x `kernel_size` conv, "same" padding, activation, 2x2 max-pool, stride 2),
    then a Dense + activation per entry of `hidden_dims`, then a Dense to `num_classes` logits.

    `image_size` is `(height, width)` (an int means square); each pool floors odd sizes.
    """

    in_channels: int
    image_size: tuple[int, int]
    num_classes: int = 10
    channels: tuple[int, ...] = (16, 32)
    kernel_size: int = 3
    hidden_dims: tuple[int, ...] = (64,)
    activation: str = "relu"

    def __post_init__(self) -> None:
        name = type(self).__name__
        given: Any = self.image_size
        size: tuple[int, ...] = (given, given) if isinstance(given, int) else tuple(given)
        object.__setattr__(self, "image_size", size)
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "hidden_dims", tuple(self.hidden_dims))
        _check_positive(
            name,
            in_channels=self.in_channels,
            num_classes=self.num_classes,
            kernel_size=self.kernel_size,
        )
        if len(size) != 2:
            _fail(name, "image_size", self.image_size, "must be (height, width) or an int")
        for field in ("image_size", "channels", "hidden_dims"):
            for value in getattr(self, field):
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    _fail(name, field, getattr(self, field), "entries must be positive integers")
        if not self.channels:
            _fail(name, "channels", self.channels, "needs at least one conv block")
        if self.kernel_size % 2 == 0:
            _fail(name, "kernel_size", self.kernel_size, "must be odd (symmetric 'same' padding)")
        if min(size) < 2 ** len(self.channels):
            _fail(
                name,
                "image_size",
                size,
                f"{len(self.channels)} 2x2 poolings need at least {2 ** len(self.channels)} pixels per side",
            )
        _check_choice(name, "activation", self.activation, ACTIVATIONS)

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """`(height, width, channels)` after the conv stack, i.e. what is flattened."""
        height, width = self.image_size
        for _ in self.channels:
            height, width = height // 2, width // 2
        return height, width, self.channels[-1]

    def replace(self, **changes: Any) -> CNNConfig:
        return dataclasses.replace(self, **changes)
