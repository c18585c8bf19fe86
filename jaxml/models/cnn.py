"""A small convolutional classifier: `[batch, height, width, in_channels]` (NHWC) -> logits."""

from __future__ import annotations

import flax.linen as nn
from jax import Array

from jaxml.configs import CNNConfig
from jaxml.layers.ffn import ACTIVATION_FNS


class CNNClassifier(nn.Module):
    """Conv blocks `convs_i` (conv, activation, 2x2 max-pool), flatten, Dense `hidden_i`, `head`.

    Returns logits `[batch, num_classes]`. The flatten is in NHWC order (height, width, channel);
    the torch twin permutes its NCHW activations to NHWC before flattening, so every kernel
    converts with the plain rules of `torchref.convert`.
    """

    config: CNNConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        expected = (*cfg.image_size, cfg.in_channels)
        if x.ndim != 4 or x.shape[1:] != expected:
            raise ValueError(
                f"x must be NHWC [batch, {', '.join(map(str, expected))}], got {x.shape}"
            )
        act = ACTIVATION_FNS[cfg.activation]
        k = cfg.kernel_size
        for i, features in enumerate(cfg.channels):
            x = act(nn.Conv(features, (k, k), padding="SAME", name=f"convs_{i}")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        for i, width in enumerate(cfg.hidden_dims):
            x = act(nn.Dense(width, name=f"hidden_{i}")(x))
        return nn.Dense(cfg.num_classes, name="head")(x)
