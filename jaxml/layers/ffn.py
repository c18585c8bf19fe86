"""Position-wise feed-forward networks: two-layer MLP and SwiGLU."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
from jax import Array

from jaxml.configs import FFNConfig
from jaxml.layers.dense import Dense

ACTIVATION_FNS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "tanh": jax.numpy.tanh,
    "silu": jax.nn.silu,
}


class FeedForward(nn.Module):
    """`w2(act(w1(x)))`: `[..., embed_dim] -> [..., embed_dim]`."""

    config: FFNConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        h = Dense(cfg.ffn_latent_dim, use_bias=cfg.use_bias, name="w1")(x)
        return Dense(cfg.embed_dim, use_bias=cfg.use_bias, name="w2")(
            ACTIVATION_FNS[cfg.activation](h)
        )


class SwiGLU(nn.Module):
    """`w2(silu(w1(x)) * w3(x))` (Shazeer 2020; the Llama/Mixtral names w1=gate, w3=up, w2=down)."""

    config: FFNConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        gate = Dense(cfg.ffn_latent_dim, use_bias=cfg.use_bias, name="w1")(x)
        up = Dense(cfg.ffn_latent_dim, use_bias=cfg.use_bias, name="w3")(x)
        return Dense(cfg.embed_dim, use_bias=cfg.use_bias, name="w2")(jax.nn.silu(gate) * up)


def make_ffn(config: FFNConfig, name: str | None = None) -> nn.Module:
    """The dense FFN that `config.kind` names (`mlp` or `swiglu`)."""
    cls = SwiGLU if config.kind == "swiglu" else FeedForward
    return cls(config, name=name)
