"""The shared configs: torchref uses the very same frozen dataclasses as jaxml (no jax import)."""

from jaxml.config import (
    ACTIVATIONS,
    ATTENTION_TYPES,
    FFN_KINDS,
    AttentionConfig,
    CNNConfig,
    FFNConfig,
    RegressorConfig,
    TransformerConfig,
    parse_latent_dims,
)

__all__ = [
    "ACTIVATIONS",
    "ATTENTION_TYPES",
    "FFN_KINDS",
    "AttentionConfig",
    "CNNConfig",
    "FFNConfig",
    "RegressorConfig",
    "TransformerConfig",
    "parse_latent_dims",
]
