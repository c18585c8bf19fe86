"""Model configs: regressors, the classic post-norm transformer family, the CNN classifier."""

from __future__ import annotations

from dataclasses import dataclass

from jaxml.configs._validate import Config, check_choice, check_positive, fail
from jaxml.configs.layers import ACTIVATIONS, AttentionConfig, FFNConfig


def parse_latent_dims(value: str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """`"128,64,32"` (the CLI form) or a sequence of ints -> `(128, 64, 32)`; `""` -> `()`.

    An empty entry (`"64,,32"`) or a non-integer is a ValueError naming `latent_dims`.
    """
    if not isinstance(value, str):
        return RegressorConfig(1, latent_dims=value).latent_dims  # type: ignore[arg-type]
    parts = [p.strip() for p in value.split(",")] if value.strip() else []
    if not all(p.lstrip("-").isdigit() for p in parts):
        raise ValueError(
            f"RegressorConfig.latent_dims={value!r} is invalid: must be comma-separated integers "
            "with no empty entries"
        )
    return tuple(int(p) for p in parts)


@dataclass(frozen=True)
class RegressorConfig(Config):
    """`LinearRegressor` / `MLPRegressor`: `[batch, input_dim] -> [batch, output_dim]`.

    `latent_dims` are the MLP's hidden widths (`"128,64,32"` is accepted and stored as a tuple);
    the linear model has none. `activation` is the MLP's hidden activation.
    """

    input_dim: int
    output_dim: int = 1
    latent_dims: tuple[int, ...] = ()
    activation: str = "relu"

    def normalize(self) -> None:
        if isinstance(self.latent_dims, str):
            object.__setattr__(self, "latent_dims", parse_latent_dims(self.latent_dims))

    def validate(self) -> None:
        check_positive(self, "input_dim", "output_dim")
        if any(width < 1 for width in self.latent_dims):
            fail(self, "latent_dims", self.latent_dims, "every width must be a positive integer")
        check_choice(self, "activation", ACTIVATIONS)


@dataclass(frozen=True)
class TransformerConfig(Config):
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

    def validate(self) -> None:
        check_positive(
            self,
            "input_dim",
            "embed_dim",
            "ffn_latent_dim",
            "num_heads",
            "output_dim",
            "num_layers",
            "max_seq_len",
            "num_encoder_layers",
            "num_decoder_layers",
        )
        if self.embed_dim % 2:
            fail(self, "embed_dim", self.embed_dim, "must be even (sinusoidal positions)")
        if not self.layer_norm_eps > 0:
            fail(self, "layer_norm_eps", self.layer_norm_eps, "must be > 0")
        self.attention_config(causal=False)  # validates attention_type / num_groups / num_heads
        ffn = self.ffn_config
        if ffn is not None and ffn.embed_dim != self.embed_dim:
            fail(self, "ffn_config", ffn, f"its embed_dim must equal embed_dim={self.embed_dim}")
        if ffn is not None and ffn.ffn_latent_dim != self.ffn_latent_dim:
            fail(
                self,
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


@dataclass(frozen=True)
class CNNConfig(Config):
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

    def normalize(self) -> None:
        size = self.image_size
        if isinstance(size, int) and not isinstance(size, bool):
            object.__setattr__(self, "image_size", (size, size))

    def validate(self) -> None:
        check_positive(self, "in_channels", "num_classes", "kernel_size")
        for field in ("image_size", "channels", "hidden_dims"):
            if any(value < 1 for value in getattr(self, field)):
                fail(self, field, getattr(self, field), "entries must be positive integers")
        if not self.channels:
            fail(self, "channels", self.channels, "needs at least one conv block")
        if self.kernel_size % 2 == 0:
            fail(self, "kernel_size", self.kernel_size, "must be odd (symmetric 'same' padding)")
        if min(self.image_size) < 2 ** len(self.channels):
            fail(
                self,
                "image_size",
                self.image_size,
                f"{len(self.channels)} 2x2 poolings need at least "
                f"{2 ** len(self.channels)} pixels per side",
            )
        check_choice(self, "activation", ACTIVATIONS)

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """`(height, width, channels)` after the conv stack, i.e. what is flattened."""
        height, width = self.image_size
        for _ in self.channels:
            height, width = height // 2, width // 2
        return height, width, self.channels[-1]
