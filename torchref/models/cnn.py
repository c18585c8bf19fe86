"""A small convolutional classifier, PyTorch twin: `[batch, in_channels, height, width]` (NCHW)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from jaxml.configs import CNNConfig
from torchref.layers.ffn import ACTIVATION_FNS


class CNNClassifier(nn.Module):
    """Conv blocks `convs.i` (conv, activation, 2x2 max-pool), flatten, `hidden.i`, `head`.

    Returns logits `[batch, num_classes]`. Before flattening, the activations are permuted from
    NCHW to NHWC so the flattened order matches jaxml's and the first dense weight converts with
    the plain `[in, out] <-> [out, in]` transpose (conv kernels: HWIO <-> OIHW).
    """

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        k = config.kernel_size
        in_channels = (config.in_channels, *config.channels)
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in, c_out, k, padding=k // 2)
            for c_in, c_out in zip(in_channels[:-1], in_channels[1:], strict=True)
        )
        widths = (math.prod(config.feature_shape), *config.hidden_dims)
        self.hidden = nn.ModuleList(
            nn.Linear(w_in, w_out) for w_in, w_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.head = nn.Linear(widths[-1], config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        expected = (cfg.in_channels, *cfg.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"x must be NCHW [batch, {', '.join(map(str, expected))}], got {tuple(x.shape)}"
            )
        act = ACTIVATION_FNS[cfg.activation]
        for conv in self.convs:
            x = F.max_pool2d(act(conv(x)), 2)
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        for layer in self.hidden:
            x = act(layer(x))
        return self.head(x)
