"""Custom gradients, PyTorch twin: the `jaxml.autograd` ops as `torch.autograd.Function`s.

The chapter's `Linear`, `ReLU`, `Square`, `Power`, plus `Exp`, `Sigmoid`, `Tanh`, `Softmax`,
`LogSoftmax`, `CrossEntropy`, `MSE` and `LayerNorm`. Each class has the three parts of the
modern Function API:
- `forward(*inputs)`: the computation (no ctx);
- `setup_context(ctx, inputs, output)`: `ctx.save_for_backward(...)` once, tensors only (the
  same residuals as the JAX `fwd`); shapes and non-tensor settings go on `ctx` as attributes.
  setup_context only sees inputs and outputs, so a Function whose residuals are intermediates
  (`CrossEntropy`, `MSE`, `LayerNorm`) returns them as extra outputs marked non-differentiable
  (torch's documented pattern) and its snake_case function returns the first output;
- `backward(ctx, g)`: one gradient per forward input, `None` for non-tensors and integer labels;
  gradients are only computed where `ctx.needs_input_grad` asks for them.
`Function.apply` takes no keyword arguments, so each op also has a snake_case function with
the same signature and defaults as its `jaxml.autograd` counterpart (`linear(x, w, b)`, ...).
`MLP` composes the ops; it loads `jaxml.autograd.mlp_init` params with
`torchref.convert.load_jaxml_params`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch import nn

Tensor = torch.Tensor


def _unbroadcast(g: Tensor, shape: torch.Size) -> Tensor:
    """Sum `g` back to `shape` (the gradient of an input that was broadcast)."""
    extra = g.dim() - len(shape)
    axes = list(range(extra)) + [
        extra + i for i, n in enumerate(shape) if n == 1 and g.shape[extra + i] != 1
    ]
    return g.sum(dim=axes).reshape(shape) if axes else g


# --- the chapter's ops -------------------------------------------------------------------------


class Linear(torch.autograd.Function):
    """`x · wᵀ + b`: x `[..., in]`, w `[out, in]`, b broadcastable to `[..., out]`.
    Saves x and w; keeps b's shape on ctx to sum the bias gradient back to it."""

    @staticmethod
    def forward(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        return x.matmul(w.t()) + b

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor, Tensor], output: Tensor) -> None:
        x, w, b = inputs
        ctx.save_for_backward(x, w)
        ctx.bias_shape = b.shape

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, w = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _unbroadcast(g.matmul(w), x.shape)
        if ctx.needs_input_grad[1]:
            xb = x.expand(*g.shape[:-1], x.shape[-1])
            gw = g.reshape(-1, g.shape[-1]).t().matmul(xb.reshape(-1, x.shape[-1]))
        if ctx.needs_input_grad[2]:
            gb = _unbroadcast(g, ctx.bias_shape)
        return gx, gw, gb


class ReLU(torch.autograd.Function):
    """`max(x, 0)`. Saves the boolean mask `x > 0`; the gradient at 0 is 0."""

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return x.clamp_min(0)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor], output: Tensor) -> None:
        ctx.save_for_backward(inputs[0] > 0)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        (mask,) = ctx.saved_tensors
        return g * mask


class Square(torch.autograd.Function):
    """`x²`. Saves x (the gradient is 2x·g)."""

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return x * x

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor], output: Tensor) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return 2 * x * g


class Power(torch.autograd.Function):
    """`xⁿ` with gradients for base and exponent (both tensors, broadcast together).
    Saves x, n and the output; the same edge rules as `jaxml.autograd.power` (d/dx = 0 where
    n == 0, d/dn = 0 where x == 0, d/dn = xⁿ·log|x| for x < 0), so no NaN where xⁿ is finite."""

    @staticmethod
    def forward(x: Tensor, n: Tensor) -> Tensor:
        return torch.pow(x, n)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
        x, n = inputs
        ctx.save_for_backward(x, n, output)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, n, y = ctx.saved_tensors
        gx = gn = None
        if ctx.needs_input_grad[0]:
            dx = torch.where(n == 0, torch.zeros_like(y), n * torch.pow(x, n - 1))
            gx = _unbroadcast(g * dx, x.shape)
        if ctx.needs_input_grad[1]:
            safe = torch.where(x == 0, torch.ones_like(x), x).abs()
            dn = torch.where(x == 0, torch.zeros_like(y), y * torch.log(safe))
            gn = _unbroadcast(g * dn, n.shape)
        return gx, gn


# --- element-wise activations ------------------------------------------------------------------


class Exp(torch.autograd.Function):
    """`eˣ`. Saves only the output y (gradient y·g)."""

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return torch.exp(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor], output: Tensor) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return y * g


class Sigmoid(torch.autograd.Function):
    """`1 / (1 + e⁻ˣ)` from `e^-|x|` (never overflows). Saves only the output y."""

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        e = torch.exp(-x.abs())
        return torch.where(x >= 0, 1 / (1 + e), e / (1 + e))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor], output: Tensor) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return y * (1 - y) * g


class Tanh(torch.autograd.Function):
    """`tanh x`. Saves only the output y (gradient (1 − y²)·g)."""

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor], output: Tensor) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return (1 - y * y) * g


# --- normalised exponentials and losses -------------------------------------------------------


class Softmax(torch.autograd.Function):
    """Max-shifted softmax along `axis`. Saves only the output y: dx = y·(g − Σ g·y)."""

    @staticmethod
    def forward(x: Tensor, axis: int) -> Tensor:
        e = torch.exp(x - x.amax(dim=axis, keepdim=True))
        return e / e.sum(dim=axis, keepdim=True)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, int], output: Tensor) -> None:
        ctx.save_for_backward(output)
        ctx.axis = inputs[1]

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        (y,) = ctx.saved_tensors
        return y * (g - (g * y).sum(dim=ctx.axis, keepdim=True)), None


class LogSoftmax(torch.autograd.Function):
    """Max-shifted log-softmax along `axis`. Saves only the output y: dx = g − exp(y)·Σ g."""

    @staticmethod
    def forward(x: Tensor, axis: int) -> Tensor:
        z = x - x.amax(dim=axis, keepdim=True)
        return z - torch.log(torch.exp(z).sum(dim=axis, keepdim=True))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, int], output: Tensor) -> None:
        ctx.save_for_backward(output)
        ctx.axis = inputs[1]

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        (y,) = ctx.saved_tensors
        return g - torch.exp(y) * g.sum(dim=ctx.axis, keepdim=True), None


def _shifted_logsumexp(logits: Tensor) -> tuple[Tensor, Tensor]:
    m = logits.amax(dim=-1)
    return m, torch.log(torch.exp(logits - m.unsqueeze(-1)).sum(dim=-1))


class CrossEntropy(torch.autograd.Function):
    """Fused mean softmax cross-entropy: logits `[..., classes]`, integer labels `[...]`, computed
    relative to the row max. Saves logits, labels, the row max m and `log Σ e^(logits − m)`; the
    backward recomputes the softmax from them. m and log Σ are extra (non-differentiable) outputs
    of `forward`, so `setup_context` can save them without recomputing; use `cross_entropy`."""

    @staticmethod
    def forward(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        m = logits.amax(dim=-1)
        log_sum = torch.log(torch.exp(logits - m.unsqueeze(-1)).sum(dim=-1))
        picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        return (log_sum - (picked - m)).mean(), m, log_sum

    @staticmethod
    def setup_context(
        ctx: Any, inputs: tuple[Tensor, Tensor], output: tuple[Tensor, Tensor, Tensor]
    ) -> None:
        logits, labels = inputs
        _, m, log_sum = output
        ctx.mark_non_differentiable(m, log_sum)
        ctx.save_for_backward(logits, labels, m, log_sum)

    @staticmethod
    def backward(ctx: Any, g: Tensor, *_: Tensor) -> tuple[Tensor, None]:
        logits, labels, m, log_sum = ctx.saved_tensors
        probs = torch.exp(logits - m.unsqueeze(-1) - log_sum.unsqueeze(-1))
        onehot = nn.functional.one_hot(labels, logits.shape[-1]).to(logits.dtype)
        return (probs - onehot) * (g / m.numel()), None


class MSE(torch.autograd.Function):
    """Mean of `(pred − target)²` (same shapes). Saves only the difference d (gradients ±2d·g/N),
    returned by `forward` as a second, non-differentiable output; use `mse`."""

    @staticmethod
    def forward(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        d = pred - target
        return (d * d).mean(), d

    @staticmethod
    def setup_context(
        ctx: Any, inputs: tuple[Tensor, Tensor], output: tuple[Tensor, Tensor]
    ) -> None:
        d = output[1]
        ctx.mark_non_differentiable(d)
        ctx.save_for_backward(d)

    @staticmethod
    def backward(ctx: Any, g: Tensor, _: Tensor) -> tuple[Tensor, Tensor]:
        (d,) = ctx.saved_tensors
        gd = d * (2 * g / d.numel())
        return gd, -gd


class LayerNorm(torch.autograd.Function):
    """LayerNorm over the last axis with `scale` and `bias` `[features]` (biased variance).
    Saves x̂, 1/σ `[..., 1]` and scale; x̂ and 1/σ are extra non-differentiable outputs of
    `forward`, so nothing is recomputed; use `layer_norm`."""

    @staticmethod
    def forward(
        x: Tensor, scale: Tensor, bias: Tensor, eps: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        xc = x - x.mean(dim=-1, keepdim=True)
        rstd = torch.rsqrt((xc * xc).mean(dim=-1, keepdim=True) + eps)
        xhat = xc * rstd
        return xhat * scale + bias, xhat, rstd

    @staticmethod
    def setup_context(
        ctx: Any,
        inputs: tuple[Tensor, Tensor, Tensor, float],
        output: tuple[Tensor, Tensor, Tensor],
    ) -> None:
        _, xhat, rstd = output
        ctx.mark_non_differentiable(xhat, rstd)
        ctx.save_for_backward(xhat, rstd, inputs[1])

    @staticmethod
    def backward(ctx: Any, g: Tensor, *_: Tensor) -> tuple[Tensor | None, ...]:
        xhat, rstd, scale = ctx.saved_tensors
        ghat = g * scale
        gx = rstd * (
            ghat - ghat.mean(dim=-1, keepdim=True) - xhat * (ghat * xhat).mean(dim=-1, keepdim=True)
        )
        leading = list(range(g.dim() - 1))
        gscale = (g * xhat).sum(dim=leading) if leading else g * xhat
        gbias = g.sum(dim=leading) if leading else g
        return gx, gscale, gbias, None


# --- functional forms, same signatures as jaxml.autograd ---------------------------------------


def linear(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """`Linear.apply`: `x · wᵀ + b`."""
    return Linear.apply(x, w, b)


def relu(x: Tensor) -> Tensor:
    """`ReLU.apply`."""
    return ReLU.apply(x)


def square(x: Tensor) -> Tensor:
    """`Square.apply`."""
    return Square.apply(x)


def power(x: Tensor, n: Tensor | float) -> Tensor:
    """`Power.apply`; a Python number n becomes a (non-differentiable) tensor like x."""
    if not torch.is_tensor(n):
        n = torch.tensor(n, dtype=x.dtype, device=x.device)
    return Power.apply(x, n)


def exp(x: Tensor) -> Tensor:
    """`Exp.apply`."""
    return Exp.apply(x)


def sigmoid(x: Tensor) -> Tensor:
    """`Sigmoid.apply`."""
    return Sigmoid.apply(x)


def tanh(x: Tensor) -> Tensor:
    """`Tanh.apply`."""
    return Tanh.apply(x)


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """`Softmax.apply` along `axis`."""
    return Softmax.apply(x, axis)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """`LogSoftmax.apply` along `axis`."""
    return LogSoftmax.apply(x, axis)


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """`CrossEntropy.apply`; raises ValueError unless labels are integers of shape logits[:-1]."""
    if labels.shape != logits.shape[:-1] or labels.is_floating_point():
        raise ValueError(
            f"labels must be integers of shape logits.shape[:-1] = {tuple(logits.shape[:-1])}, "
            f"got {labels.dtype} {tuple(labels.shape)}"
        )
    return CrossEntropy.apply(logits, labels.long())[0]


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """`MSE.apply`; raises ValueError when the shapes differ."""
    if pred.shape != target.shape:
        raise ValueError(
            f"mse needs pred and target of the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    return MSE.apply(pred, target)[0]


def layer_norm(x: Tensor, scale: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """`LayerNorm.apply`; raises ValueError on a scale/bias shape other than `[features]`."""
    features = x.shape[-1]
    if tuple(scale.shape) != (features,) or tuple(bias.shape) != (features,):
        raise ValueError(
            f"layer_norm scale and bias must have shape ({features},), got {tuple(scale.shape)} and {tuple(bias.shape)}"
        )
    if eps <= 0:
        raise ValueError(f"layer_norm eps must be > 0, got {eps}")
    return LayerNorm.apply(x, scale, bias, eps)[0]


# --- composition --------------------------------------------------------------------------------

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": relu,
    "tanh": tanh,
    "sigmoid": sigmoid,
}


class MLP(nn.Module):
    """`[..., in] -> [..., out]` made only of the custom Functions (twin of `jaxml.autograd.mlp_apply`).

    `nn.Linear` modules only hold the parameters (`layers.i.weight [out, in]`, `layers.i.bias`);
    the forward pass runs `Linear.apply` and the custom activation.
    """

    def __init__(self, sizes: Sequence[int], activation: str = "tanh") -> None:
        super().__init__()
        if len(sizes) < 2 or any(n < 1 for n in sizes):
            raise ValueError(f"sizes must be at least (in, out), all >= 1, got {tuple(sizes)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )

    def forward(self, x: Tensor) -> Tensor:
        act = ACTIVATIONS[self.activation]
        for i, module in enumerate(self.layers):
            layer = cast(nn.Linear, module)
            x = linear(x, layer.weight, layer.bias)
            if i < len(self.layers) - 1:
                x = act(x)
        return x
