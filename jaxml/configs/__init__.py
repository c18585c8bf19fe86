"""Every config of jaxml, torchref and the CLIs, from one import path (no jax, no torch).

    from jaxml.configs import AttentionConfig, FFNConfig, TransformerConfig, OptimizerConfig

Each is a frozen, hashable dataclass whose fields are type-checked and validated on construction;
any bad field is a `ValueError` naming it (`AttentionConfig.num_groups=3 is invalid: must divide
num_heads=8`), so a config can be a static `jax.jit` argument.
"""

from jaxml.configs.decoding import DecodeConfig, SamplingConfig
from jaxml.configs.layers import ACTIVATIONS, ATTENTION_TYPES, FFN_KINDS, AttentionConfig, FFNConfig
from jaxml.configs.lm import LMConfig, SOTAConfig
from jaxml.configs.lm_training import LMTrainConfig, default_lm_optimizer
from jaxml.configs.models import CNNConfig, RegressorConfig, TransformerConfig, parse_latent_dims
from jaxml.configs.speculative import SpeculativeConfig
from jaxml.configs.training import (
    LOSS_NAMES,
    OPTIMIZERS,
    PARALLEL_MODES,
    SCHEDULES,
    OptimizerConfig,
    TrainConfig,
)

__all__ = [
    "ACTIVATIONS",
    "ATTENTION_TYPES",
    "FFN_KINDS",
    "LOSS_NAMES",
    "OPTIMIZERS",
    "PARALLEL_MODES",
    "SCHEDULES",
    "AttentionConfig",
    "CNNConfig",
    "DecodeConfig",
    "FFNConfig",
    "LMConfig",
    "LMTrainConfig",
    "OptimizerConfig",
    "RegressorConfig",
    "SOTAConfig",
    "SamplingConfig",
    "SpeculativeConfig",
    "TrainConfig",
    "TransformerConfig",
    "default_lm_optimizer",
    "parse_latent_dims",
]
