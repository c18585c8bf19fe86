"""Mixture of Experts with fixed-capacity dispatch, PyTorch twin of `jaxml.layers.moe`.

Same routing (float32 router `gate`, top-k, choice-major priority, cumulative-sum slots), same
capacity and overflow policy, same stacked expert parameters `w1 [E, embed_dim, latent]`,
`w2 [E, latent, embed_dim]` (`w3`, `b1/b2/b3`) and the same two dispatch implementations.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from jaxml.configs import FFNConfig
from torchref.layers.ffn import ACTIVATION_FNS, make_ffn


class Routing(NamedTuple):
    """Per choice `[topk, T]` (choice-major): chosen expert, combine weight, slot, kept flag."""

    expert: torch.Tensor  # int64
    weight: torch.Tensor  # float32
    slot: torch.Tensor  # int64, may be >= capacity
    kept: torch.Tensor  # bool


def route(
    logits: torch.Tensor, config: FFNConfig, capacity: int
) -> tuple[Routing, dict[str, torch.Tensor]]:
    """Top-k routing of `logits [T, E]` (float32) and the aux losses / statistics."""
    num_tokens, num_experts = logits.shape
    probs = torch.softmax(logits, dim=-1)
    top_p, top_e = torch.topk(probs, config.topk, dim=-1)  # [T, k]
    if config.norm_topk_prob:
        top_p = top_p / top_p.sum(dim=-1, keepdim=True)
    expert = top_e.T.contiguous()  # [k, T]
    onehot = F.one_hot(expert, num_experts)  # [k, T, E] int64
    position = torch.cumsum(onehot.reshape(-1, num_experts), dim=0).reshape(onehot.shape) - 1
    slot = (position * onehot).sum(dim=-1)
    kept = slot < capacity
    routed = onehot.sum(dim=(0, 1)).float()
    load_balance = num_experts * torch.sum(routed / (num_tokens * config.topk) * probs.mean(dim=0))
    z_loss = torch.mean(torch.logsumexp(logits, dim=-1) ** 2)
    aux = {
        "aux_loss": config.alpha * load_balance + config.z_loss_coef * z_loss,
        "load_balance_loss": load_balance,
        "z_loss": z_loss,
        "tokens_per_expert": torch.clamp(routed, max=capacity),
        "dropped_fraction": 1.0 - kept.float().mean(),
    }
    return Routing(expert, top_p.T.contiguous(), slot, kept), aux


def dispatch_einsum(
    x: torch.Tensor, routing: Routing, num_experts: int, capacity: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot dispatch: `x [T, M]` -> (`[E, C, M]` expert inputs, combine mask `[T, E, C]`)."""
    expert_mask = F.one_hot(routing.expert, num_experts).to(x.dtype)  # [k, T, E]
    slot_mask = F.one_hot(torch.clamp(routing.slot, max=capacity - 1), capacity).to(x.dtype)
    slot_mask = slot_mask * routing.kept.unsqueeze(-1).to(x.dtype)  # zero row when dropped
    dispatch = torch.einsum("kte,ktc->tec", expert_mask, slot_mask)
    combine = torch.einsum("kte,ktc,kt->tec", expert_mask, slot_mask, routing.weight.to(x.dtype))
    return torch.einsum("tm,tec->ecm", x, dispatch), combine


def combine_einsum(expert_out: torch.Tensor, combine: torch.Tensor) -> torch.Tensor:
    """`[E, C, M]` expert outputs, `[T, E, C]` combine weights -> `[T, M]`."""
    return torch.einsum("ecm,tec->tm", expert_out, combine)


def destinations(routing: Routing, num_experts: int, capacity: int) -> torch.Tensor:
    """Flat slot index `expert · C + slot` of each choice, `E · C` (a spare row) when dropped."""
    dest = routing.expert * capacity + routing.slot
    return torch.where(routing.kept, dest, torch.full_like(dest, num_experts * capacity))


def dispatch_gather(
    x: torch.Tensor, dest: torch.Tensor, num_experts: int, capacity: int
) -> torch.Tensor:
    """Index dispatch: `x [T, M]` -> `[E, C, M]`; empty slots read a zero row."""
    num_tokens = x.shape[0]
    tokens = torch.arange(num_tokens, device=x.device).expand_as(dest)
    slot_token = torch.full(
        (num_experts * capacity + 1,), num_tokens, dtype=torch.long, device=x.device
    )
    slot_token = slot_token.scatter(0, dest.reshape(-1), tokens.reshape(-1))[:-1]
    padded = torch.cat([x, x.new_zeros(1, x.shape[-1])], dim=0)
    return padded.index_select(0, slot_token).reshape(num_experts, capacity, x.shape[-1])


def combine_gather(
    expert_out: torch.Tensor, dest: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """`[E, C, M]` expert outputs -> `[T, M]`: `Σ_k weight[k, t] · out[dest[k, t]]`."""
    flat = expert_out.reshape(-1, expert_out.shape[-1])
    padded = torch.cat([flat, flat.new_zeros(1, flat.shape[-1])], dim=0)
    picked = padded.index_select(0, dest.reshape(-1)).reshape(*dest.shape, flat.shape[-1])
    return torch.einsum("kt,ktm->tm", weight.to(flat.dtype), picked)


def expert_ffn(
    x: torch.Tensor, params: Mapping[str, torch.Tensor], config: FFNConfig
) -> torch.Tensor:
    """All experts at once: `x [E, C, M]` -> `[E, C, M]`."""

    def dense(name: str, h: torch.Tensor) -> torch.Tensor:
        out = torch.bmm(h, params[name])
        bias = params.get("b" + name[1:])
        return out if bias is None else out + bias.unsqueeze(1)

    h = dense("w1", x)
    if config.kind == "swiglu":
        h = F.silu(h) * dense("w3", x)
    else:
        h = ACTIVATION_FNS[config.activation](h)
    return dense("w2", h)


class MoE(nn.Module):
    """`[..., embed_dim] -> ([..., embed_dim], aux)` with the keys of `jaxml.layers.moe.MoE`."""

    def __init__(self, config: FFNConfig) -> None:
        super().__init__()
        self.config = config
        num_experts, embed, latent = config.num_experts, config.embed_dim, config.ffn_latent_dim
        self.gate = nn.Linear(embed, num_experts, bias=False)
        shapes = {"w1": (embed, latent), "w2": (latent, embed)}
        if config.kind == "swiglu":
            shapes["w3"] = (embed, latent)
        for name, (fan_in, fan_out) in shapes.items():
            bound = fan_in**-0.5
            weight = torch.empty(num_experts, fan_in, fan_out).uniform_(-bound, bound)
            self.register_parameter(name, nn.Parameter(weight))
            if config.use_bias:
                self.register_parameter(
                    "b" + name[1:], nn.Parameter(torch.zeros(num_experts, fan_out))
                )
        self.overflow_expert = (
            make_ffn(config) if config.overflow_policy == "overflow_expert" else None
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.config
        num_experts = cfg.num_experts
        tokens = x.reshape(-1, x.shape[-1])
        capacity = cfg.expert_capacity(tokens.shape[0])
        logits = F.linear(tokens.float(), self.gate.weight.float())
        routing, aux = route(logits, cfg, capacity)
        params = {name: p for name, p in self.named_parameters(recurse=False) if name[0] in "wb"}
        if cfg.dispatch == "einsum":
            expert_in, combine = dispatch_einsum(tokens, routing, num_experts, capacity)
            y = combine_einsum(expert_ffn(expert_in, params, cfg), combine)
        else:
            dest = destinations(routing, num_experts, capacity)
            expert_in = dispatch_gather(tokens, dest, num_experts, capacity)
            weight = torch.where(routing.kept, routing.weight, torch.zeros_like(routing.weight))
            y = combine_gather(expert_ffn(expert_in, params, cfg), dest, weight)
        if self.overflow_expert is not None:
            overflow = torch.where(routing.kept, torch.zeros_like(routing.weight), routing.weight)
            dense = self.overflow_expert(tokens)
            y = y + overflow.sum(dim=0).unsqueeze(-1).to(dense.dtype) * dense
        return y.to(x.dtype).reshape(x.shape), aux
