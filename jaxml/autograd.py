"""Custom gradients: ops written as `jax.custom_vjp` with hand-written forward and backward rules.

The JAX counterpart of the PyTorch "custom autograd" chapter (`Linear`, `ReLU`, `Square`,
`Power`), extended with `exp`, `sigmoid`, `tanh`, `softmax`, `log_softmax`, a fused
`cross_entropy`, `mse` and `layer_norm`. `torchref.autograd` has the same ops as
`torch.autograd.Function`s (`Linear.apply`, ...), saving the same residuals.

How one op is built (`f = jax.custom_vjp(f); f.defvjp(f_fwd, f_bwd)`):
- `f(*args)` is the forward computation, used when nothing differentiates through it.
- `f_fwd(*args) -> (out, residuals)`: the forward pass under differentiation. The residuals are
  what it keeps for the backward pass (the role of `ctx.save_for_backward`); each op's docstring
  says what it keeps and why.
- `f_bwd(residuals, g) -> tuple`: one cotangent per array input, each with that input's shape and
  dtype (gradients of broadcast inputs are summed back to their shape); `None` for an integer input.
  Non-array settings (`axis`, `eps`) are `nondiff_argnums` and come first in `f_bwd`.

A custom_vjp function is reverse-mode only: `jax.grad`, `jax.vjp` and `jax.jacrev` work,
`jax.jvp` / `jax.jacfwd` raise. Check one with `check_grads(f, args, order=1, modes=("rev",))`.

`mlp_init` / `mlp_apply` compose the ops into an MLP: a pure function of a params pytree
`{"layers_i": {"weight": [out, in], "bias": [out]}}` (torch layout, so `torchref.autograd.MLP`
loads it with `torchref.convert.load_jaxml_params`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import jax
import jax.numpy as jnp
from jax import Array

Params = dict[str, dict[str, Array]]


def _unbroadcast(g: Array, like: Array | float) -> Array:
    """Sum `g` back to the shape of `like` (the gradient of a broadcast input), in its dtype."""
    shape = jnp.shape(like)
    extra = g.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(
        extra + i for i, n in enumerate(shape) if n == 1 and g.shape[extra + i] != 1
    )
    if axes:
        g = jnp.sum(g, axis=axes).reshape(shape)
    return g.astype(jnp.result_type(like))


# --- the chapter's ops -------------------------------------------------------------------------


@jax.custom_vjp
def linear(x: Array, w: Array, b: Array) -> Array:
    """`x · wᵀ + b`: x `[..., in]`, w `[out, in]`, b broadcastable to `[..., out]` -> `[..., out]`.

    Saves x and w (each weight/input gradient is a matmul with the other) and b, only for its
    shape when the bias was broadcast (it is an input, so keeping it costs no memory).
    Backward: dx = g·w, dw = Σ gᵀ·x over the leading axes, db = g summed to b's shape.
    """
    return jnp.matmul(x, w.T) + b


def _linear_fwd(x: Array, w: Array, b: Array) -> tuple[Array, tuple[Array, Array, Array]]:
    return linear(x, w, b), (x, w, b)


def _linear_bwd(res: tuple[Array, Array, Array], g: Array) -> tuple[Array, Array, Array]:
    x, w, b = res
    gx = _unbroadcast(jnp.matmul(g, w), x)
    gw = jnp.einsum("...o,...i->oi", g, jnp.broadcast_to(x, (*g.shape[:-1], x.shape[-1])))
    return gx, gw.astype(w.dtype), _unbroadcast(g, b)


linear.defvjp(_linear_fwd, _linear_bwd)


@jax.custom_vjp
def relu(x: Array) -> Array:
    """`max(x, 0)`, any shape. Saves the boolean mask `x > 0` (1 byte per element, not the
    float input). The gradient at exactly 0 is taken as 0, as in `jax.nn.relu` and torch."""
    return jnp.maximum(x, 0)


def _relu_fwd(x: Array) -> tuple[Array, tuple[Array]]:
    return relu(x), (x > 0,)


def _relu_bwd(res: tuple[Array], g: Array) -> tuple[Array]:
    (mask,) = res
    return (jnp.where(mask, g, 0),)


relu.defvjp(_relu_fwd, _relu_bwd)


@jax.custom_vjp
def square(x: Array) -> Array:
    """`x²`, any shape. Saves x (the gradient is 2x·g)."""
    return x * x


def _square_fwd(x: Array) -> tuple[Array, tuple[Array]]:
    return square(x), (x,)


def _square_bwd(res: tuple[Array], g: Array) -> tuple[Array]:
    (x,) = res
    return (2 * x * g,)


square.defvjp(_square_fwd, _square_bwd)


@jax.custom_vjp
def power(x: Array, n: Array) -> Array:
    """`xⁿ` with gradients for both base and exponent; x and n broadcast against each other.

    Saves x, n and the output y (reused by d/dn = y·log|x|; d/dx = n·xⁿ⁻¹ needs one more pow).
    Edges, chosen so that no NaN appears where the value itself is finite:
    - d/dx is 0 where n == 0 (not 0·0⁻¹ = NaN at x = 0);
    - d/dn is 0 where x == 0 (the limit of xⁿ·log x for n > 0, as in JAX's own rule);
    - d/dn uses log|x| for x < 0: the real part of the derivative, finite where xⁿ is real
      (integer-valued n). torch's built-in `pow` returns NaN there.
    Where the value is NaN (x < 0 with fractional n) so are the gradients; at x = 0 with
    0 < n < 1 d/dx is +inf, as it is mathematically.
    """
    return jnp.power(x, n)


def _power_fwd(x: Array, n: Array) -> tuple[Array, tuple[Array, Array, Array]]:
    y = power(x, n)
    return y, (x, n, y)


def _power_bwd(res: tuple[Array, Array, Array], g: Array) -> tuple[Array, Array]:
    x, n, y = res
    dx = jnp.where(n == 0, 0, n * jnp.power(x, n - 1))
    dn = jnp.where(x == 0, 0, y * jnp.log(jnp.abs(jnp.where(x == 0, 1, x))))
    return _unbroadcast(g * dx, x), _unbroadcast(g * dn, n)


power.defvjp(_power_fwd, _power_bwd)


# --- element-wise activations ------------------------------------------------------------------


@jax.custom_vjp
def exp(x: Array) -> Array:
    """`eˣ`, any shape. Saves only the output y (the gradient is y·g; x is not needed)."""
    return jnp.exp(x)


def _exp_fwd(x: Array) -> tuple[Array, tuple[Array]]:
    y = exp(x)
    return y, (y,)


def _exp_bwd(res: tuple[Array], g: Array) -> tuple[Array]:
    (y,) = res
    return (y * g,)


exp.defvjp(_exp_fwd, _exp_bwd)


@jax.custom_vjp
def sigmoid(x: Array) -> Array:
    """`1 / (1 + e⁻ˣ)`, any shape, computed from `e^-|x|` so it never overflows (±1000 is fine).
    Saves only the output y (the gradient is y·(1 − y)·g)."""
    e = jnp.exp(-jnp.abs(x))
    return jnp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _sigmoid_fwd(x: Array) -> tuple[Array, tuple[Array]]:
    y = sigmoid(x)
    return y, (y,)


def _sigmoid_bwd(res: tuple[Array], g: Array) -> tuple[Array]:
    (y,) = res
    return (y * (1 - y) * g,)


sigmoid.defvjp(_sigmoid_fwd, _sigmoid_bwd)


@jax.custom_vjp
def tanh(x: Array) -> Array:
    """`tanh x`, any shape. Saves only the output y (the gradient is (1 − y²)·g)."""
    return jnp.tanh(x)


def _tanh_fwd(x: Array) -> tuple[Array, tuple[Array]]:
    y = tanh(x)
    return y, (y,)


def _tanh_bwd(res: tuple[Array], g: Array) -> tuple[Array]:
    (y,) = res
    return ((1 - y * y) * g,)


tanh.defvjp(_tanh_fwd, _tanh_bwd)


# --- normalised exponentials and losses -------------------------------------------------------


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def softmax(x: Array, axis: int = -1) -> Array:
    """`e^x / Σ e^x` along `axis`, any shape; the max is subtracted first, so logits of 1e4 are
    fine. Saves only the output y: the backward is y·(g − Σ g·y)."""
    e = jnp.exp(x - jnp.max(x, axis=axis, keepdims=True))
    return e / jnp.sum(e, axis=axis, keepdims=True)


def _softmax_fwd(x: Array, axis: int) -> tuple[Array, tuple[Array]]:
    y = softmax(x, axis)
    return y, (y,)


def _softmax_bwd(axis: int, res: tuple[Array], g: Array) -> tuple[Array]:
    (y,) = res
    return (y * (g - jnp.sum(g * y, axis=axis, keepdims=True)),)


softmax.defvjp(_softmax_fwd, _softmax_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def log_softmax(x: Array, axis: int = -1) -> Array:
    """`x − logΣe^x` along `axis`, any shape, max-shifted (stable for large logits).
    Saves only the output y: softmax is exp(y), and the backward is g − exp(y)·Σ g."""
    z = x - jnp.max(x, axis=axis, keepdims=True)
    return z - jnp.log(jnp.sum(jnp.exp(z), axis=axis, keepdims=True))


def _log_softmax_fwd(x: Array, axis: int) -> tuple[Array, tuple[Array]]:
    y = log_softmax(x, axis)
    return y, (y,)


def _log_softmax_bwd(axis: int, res: tuple[Array], g: Array) -> tuple[Array]:
    (y,) = res
    return (g - jnp.exp(y) * jnp.sum(g, axis=axis, keepdims=True),)


log_softmax.defvjp(_log_softmax_fwd, _log_softmax_bwd)


def _check_labels(logits: Array, labels: Array) -> None:
    if labels.shape != logits.shape[:-1] or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(
            f"labels must be integers of shape logits.shape[:-1] = {logits.shape[:-1]}, "
            f"got {labels.dtype} {labels.shape}"
        )


def _shifted_logsumexp(logits: Array) -> tuple[Array, Array]:
    """Per-row max m and `log Σ e^(logits − m)`, both `[...]` (kept apart: m + log Σ would round
    to the precision of m, e.g. 1e-3 in float32 for logits of 1e4)."""
    m = jnp.max(logits, axis=-1)
    return m, jnp.log(jnp.sum(jnp.exp(logits - m[..., None]), axis=-1))


def _cross_entropy_value(logits: Array, labels: Array) -> tuple[Array, Array, Array]:
    _check_labels(logits, labels)
    m, log_sum = _shifted_logsumexp(logits)
    picked = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    return jnp.mean(log_sum - (picked - m)), m, log_sum


@jax.custom_vjp
def cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean `logΣe^logits − logits[label]`: logits `[..., classes]`, integer labels `[...]` in
    `[0, classes)` -> scalar. Fused softmax + NLL, computed relative to the row max, so it is
    stable and precise for any logit magnitude.

    Saves logits, labels, the row max m and `log Σ e^(logits − m)` (both `[...]`), and recomputes
    the softmax as exp(logits − m − log Σ) in the backward instead of storing the
    `[..., classes]` probabilities. Backward: (softmax − onehot(labels)) · g / N; labels get no
    gradient.
    """
    return _cross_entropy_value(logits, labels)[0]


def _cross_entropy_fwd(
    logits: Array, labels: Array
) -> tuple[Array, tuple[Array, Array, Array, Array]]:
    loss, m, log_sum = _cross_entropy_value(logits, labels)
    return loss, (logits, labels, m, log_sum)


def _cross_entropy_bwd(res: tuple[Array, Array, Array, Array], g: Array) -> tuple[Array, None]:
    logits, labels, m, log_sum = res
    probs = jnp.exp(logits - m[..., None] - log_sum[..., None])
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return ((probs - onehot) * (g / m.size)).astype(logits.dtype), None


cross_entropy.defvjp(_cross_entropy_fwd, _cross_entropy_bwd)


def _check_same_shape(pred: Array, target: Array) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"mse needs pred and target of the same shape, got {pred.shape} and {target.shape}"
        )


@jax.custom_vjp
def mse(pred: Array, target: Array) -> Array:
    """Mean of `(pred − target)²` over all elements -> scalar. The shapes must match (a silent
    broadcast is usually a bug). Saves only the difference d (gradients ±2d·g/N)."""
    _check_same_shape(pred, target)
    d = pred - target
    return jnp.mean(d * d)


def _mse_fwd(pred: Array, target: Array) -> tuple[Array, tuple[Array]]:
    _check_same_shape(pred, target)
    d = pred - target
    return jnp.mean(d * d), (d,)


def _mse_bwd(res: tuple[Array], g: Array) -> tuple[Array, Array]:
    (d,) = res
    gd = d * (2 * g / d.size)
    return gd, -gd


mse.defvjp(_mse_fwd, _mse_bwd)


def _layer_norm_stats(x: Array, scale: Array, bias: Array, eps: float) -> tuple[Array, Array]:
    features = x.shape[-1]
    if scale.shape != (features,) or bias.shape != (features,):
        raise ValueError(
            f"layer_norm scale and bias must have shape ({features},), got {scale.shape} and {bias.shape}"
        )
    if eps <= 0:
        raise ValueError(f"layer_norm eps must be > 0, got {eps}")
    xc = x - jnp.mean(x, axis=-1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.mean(xc * xc, axis=-1, keepdims=True) + eps)
    return xc * rstd, rstd


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: Array, scale: Array, bias: Array, eps: float = 1e-5) -> Array:
    """`(x − mean) / sqrt(var + eps) · scale + bias` over the last axis: x `[..., features]`,
    scale and bias `[features]` (biased variance; eps default 1e-5 as in torch, Flax's is 1e-6).

    Saves the normalised x̂ `[..., features]`, 1/σ `[..., 1]` and scale, so the backward needs no
    second pass over the statistics: dx = (ĝ − mean ĝ − x̂·mean(ĝ·x̂)) / σ with ĝ = g·scale,
    dscale = Σ g·x̂ and dbias = Σ g over the leading axes.
    """
    xhat, _ = _layer_norm_stats(x, scale, bias, eps)
    return xhat * scale + bias


def _layer_norm_fwd(
    x: Array, scale: Array, bias: Array, eps: float
) -> tuple[Array, tuple[Array, Array, Array]]:
    xhat, rstd = _layer_norm_stats(x, scale, bias, eps)
    return xhat * scale + bias, (xhat, rstd, scale)


def _layer_norm_bwd(
    eps: float, res: tuple[Array, Array, Array], g: Array
) -> tuple[Array, Array, Array]:
    xhat, rstd, scale = res
    ghat = g * scale
    gx = rstd * (
        ghat
        - jnp.mean(ghat, axis=-1, keepdims=True)
        - xhat * jnp.mean(ghat * xhat, axis=-1, keepdims=True)
    )
    leading = tuple(range(g.ndim - 1))
    return gx, jnp.sum(g * xhat, axis=leading), jnp.sum(g, axis=leading)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


# --- composition: an MLP made only of the ops above -------------------------------------------

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {"relu": relu, "tanh": tanh, "sigmoid": sigmoid}


def mlp_init(key: Array, sizes: Sequence[int]) -> Params:
    """Params for `mlp_apply`: `{"layers_i": {"weight": [out, in], "bias": [out]}}`.

    `sizes = (in, hidden..., out)`; weights and biases ~ U(±1/√in), torch's `nn.Linear` default.
    """
    if len(sizes) < 2 or any(n < 1 for n in sizes):
        raise ValueError(f"sizes must be at least (in, out), all >= 1, got {tuple(sizes)}")
    params: Params = {}
    keys = jax.random.split(key, len(sizes) - 1)
    for i, (k, fan_in, fan_out) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True)):
        kw, kb = jax.random.split(k)
        bound = 1.0 / fan_in**0.5
        params[f"layers_{i}"] = {
            "weight": jax.random.uniform(kw, (fan_out, fan_in), jnp.float32, -bound, bound),
            "bias": jax.random.uniform(kb, (fan_out,), jnp.float32, -bound, bound),
        }
    return params


def mlp_apply(params: Params, x: Array, activation: str = "tanh") -> Array:
    """`[..., in] -> [..., out]`: `linear` layers with `activation` between them (not after the
    last), every step a custom-VJP op."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    act = ACTIVATIONS[activation]
    n = len(params)
    for i in range(n):
        layer = params[f"layers_{i}"]
        x = linear(x, layer["weight"], layer["bias"])
        if i < n - 1:
            x = act(x)
    return x
