"""Custom-gradient ops: jaxml custom_vjp checked in float64 against finite differences
(`check_grads`, reverse mode) and against `jax.grad` of the plain jnp expression; the torchref
Functions checked with `torch.autograd.gradcheck`; NaN-free edges; and an MLP made of the ops
that trains under jit and matches the same MLP built from Flax/jnp primitives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from jax.test_util import check_grads

import jaxml.autograd as J
import torchref.autograd as T
from parity.harness import assert_close, tolerance

LABELS = np.array([[1, 4, 0], [2, 2, 3]])  # for logits [2, 3, 5]


@dataclass(frozen=True)
class Case:
    name: str
    jax_fn: Callable[..., Any]
    torch_fn: Callable[..., Any]
    reference: Callable[..., Any]  # the same function in plain jnp, differentiated by JAX
    inputs: Callable[[np.random.Generator], tuple[np.ndarray, ...]]  # float64, all differentiated


def _normal(*shape: int) -> Callable[[np.random.Generator], tuple[np.ndarray, ...]]:
    return lambda r: (r.standard_normal(shape),)


def _away_from_zero(r: np.random.Generator) -> tuple[np.ndarray, ...]:
    x = r.standard_normal((3, 4))
    return (np.sign(x) * (0.1 + np.abs(x)),)  # finite differences are meaningless at the kink


def _ref_layer_norm(x: Any, s: Any, b: Any) -> Any:
    return (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-5) * s + b


def _ref_cross_entropy(logits: Any) -> Any:
    picked = jnp.take_along_axis(logits, jnp.asarray(LABELS)[..., None], -1)[..., 0]
    return jnp.mean(jnp.log(jnp.sum(jnp.exp(logits), -1)) - picked)


CASES = [
    Case(
        "linear",
        J.linear,
        T.linear,
        lambda x, w, b: x @ w.T + b,
        lambda r: (r.standard_normal((3, 4)), r.standard_normal((5, 4)), r.standard_normal(5)),
    ),
    Case(
        "linear_bias_per_row",  # the chapter's example: b [batch, out]
        J.linear,
        T.linear,
        lambda x, w, b: x @ w.T + b,
        lambda r: (r.standard_normal((3, 4)), r.standard_normal((5, 4)), r.standard_normal((3, 5))),
    ),
    Case(
        "linear_3d_bias_broadcast",
        J.linear,
        T.linear,
        lambda x, w, b: x @ w.T + b,
        lambda r: (
            r.standard_normal((2, 3, 4)),
            r.standard_normal((5, 4)),
            r.standard_normal((1, 5)),
        ),
    ),
    Case("relu", J.relu, T.relu, lambda x: jnp.where(x > 0, x, 0), _away_from_zero),
    Case("square", J.square, T.square, lambda x: x**2, _normal(3, 4)),
    Case(
        "power_scalar_exponent",
        J.power,
        T.power,
        jnp.power,
        lambda r: (r.uniform(0.5, 2.0, (3, 4)), np.array(2.5)),
    ),
    Case(
        "power_broadcast_exponent",
        J.power,
        T.power,
        jnp.power,
        lambda r: (r.uniform(0.5, 2.0, (3, 4)), r.uniform(-1.0, 3.0, (4,))),
    ),
    Case(
        "power_negative_base",  # only d/dx: xⁿ is NaN for x < 0 and the non-integer n of a finite difference
        lambda x: J.power(x, 3.0),
        lambda x: T.power(x, 3.0),
        lambda x: x**3,
        _normal(3, 4),
    ),
    Case("exp", J.exp, T.exp, jnp.exp, _normal(3, 4)),
    Case("sigmoid", J.sigmoid, T.sigmoid, lambda x: 1 / (1 + jnp.exp(-x)), _normal(3, 4)),
    Case("tanh", J.tanh, T.tanh, jnp.tanh, _normal(3, 4)),
    Case(
        "softmax",
        J.softmax,
        T.softmax,
        lambda x: jnp.exp(x) / jnp.sum(jnp.exp(x), -1, keepdims=True),
        _normal(3, 4),
    ),
    Case(
        "softmax_axis0",
        lambda x: J.softmax(x, 0),
        lambda x: T.softmax(x, 0),
        lambda x: jnp.exp(x) / jnp.sum(jnp.exp(x), 0, keepdims=True),
        _normal(3, 4),
    ),
    Case(
        "log_softmax",
        J.log_softmax,
        T.log_softmax,
        lambda x: x - jnp.log(jnp.sum(jnp.exp(x), -1, keepdims=True)),
        _normal(3, 4),
    ),
    Case(
        "cross_entropy",
        lambda x: J.cross_entropy(x, jnp.asarray(LABELS)),
        lambda x: T.cross_entropy(x, torch.from_numpy(LABELS)),
        _ref_cross_entropy,
        _normal(2, 3, 5),
    ),
    Case(
        "mse",
        J.mse,
        T.mse,
        lambda p, t: jnp.mean((p - t) ** 2),
        lambda r: (r.standard_normal((3, 4)), r.standard_normal((3, 4))),
    ),
    Case(
        "layer_norm",
        J.layer_norm,
        T.layer_norm,
        _ref_layer_norm,
        lambda r: (
            r.standard_normal((2, 3, 4)),
            1 + 0.1 * r.standard_normal(4),
            r.standard_normal(4),
        ),
    ),
]
IDS = [c.name for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_check_grads_float64_reverse_mode(case: Case) -> None:
    """Hand-written VJPs agree with central finite differences (custom_vjp has no forward mode)."""
    with jax.enable_x64(True):
        args = [jnp.asarray(a) for a in case.inputs(np.random.default_rng(0))]
        assert all(a.dtype == jnp.float64 for a in args)
        check_grads(case.jax_fn, args, order=1, modes=("rev",))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_equals_jax_grad_of_plain_expression(case: Case) -> None:
    with jax.enable_x64(True):
        args = [jnp.asarray(a) for a in case.inputs(np.random.default_rng(1))]
        out, vjp = jax.vjp(case.jax_fn, *args)
        ref_out, ref_vjp = jax.vjp(case.reference, *args)
        cotangent = jnp.asarray(np.random.default_rng(2).standard_normal(np.shape(out)))
        np.testing.assert_allclose(out, ref_out, rtol=1e-12, atol=1e-12)
        for got, want in zip(vjp(cotangent), ref_vjp(cotangent), strict=True):
            assert got.shape == want.shape and got.dtype == want.dtype
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_torch_gradcheck_float64(case: Case) -> None:
    args = tuple(
        torch.tensor(a, dtype=torch.float64, requires_grad=True)
        for a in case.inputs(np.random.default_rng(0))
    )
    assert torch.autograd.gradcheck(case.torch_fn, args)


def test_forward_mode_is_not_defined_for_custom_vjp() -> None:
    """The documented limit: jvp through a custom_vjp raises instead of returning a wrong answer."""
    x = jnp.ones(3)
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(J.tanh, (x,), (x,))


# --- edges: no NaN where the value is finite -----------------------------------------------------


def test_relu_gradient_at_zero_is_zero() -> None:
    x = jnp.array([-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(jax.grad(lambda x: J.relu(x).sum())(x), [0.0, 0.0, 1.0])
    t = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
    T.relu(t).sum().backward()
    np.testing.assert_array_equal(t.grad, [0.0, 0.0, 1.0])


@pytest.mark.parametrize("n", [0.0, 1.0, 2.0, 3.0])
def test_power_at_nonpositive_base_is_finite(n: float) -> None:
    x = np.array([-2.0, -1.0, 0.0, 0.5])
    dx, dn = jax.grad(lambda x, n: J.power(x, n).sum(), argnums=(0, 1))(jnp.asarray(x), n)
    want_dx = np.zeros_like(x) if n == 0 else n * x ** (n - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        want_dn = np.where(x == 0, 0.0, x**n * np.log(np.abs(x))).sum()
    np.testing.assert_allclose(dx, want_dx, rtol=1e-6)
    np.testing.assert_allclose(dn, want_dn, rtol=1e-6, atol=1e-6)
    tx = torch.tensor(x, requires_grad=True)
    tn = torch.tensor(n, dtype=torch.float64, requires_grad=True)
    T.power(tx, tn).sum().backward()
    assert tx.grad is not None and tn.grad is not None
    np.testing.assert_allclose(tx.grad.numpy(), want_dx, rtol=1e-12)
    np.testing.assert_allclose(tn.grad.item(), want_dn, rtol=1e-12, atol=1e-12)


def test_large_logits_stay_finite() -> None:
    """Softmax, log-softmax and cross-entropy on logits of ±1e4 equal the result for the logits
    shifted by their max (an exact invariance), so nothing overflowed."""
    logits = jnp.array([[1e4, 0.0, -1e4], [3.0, 1e4 - 1.0, 1e4]])
    labels = jnp.array([0, 2])
    shifted = logits - logits.max(-1, keepdims=True)
    for fn in (
        lambda z: (J.softmax(z) * jnp.arange(3.0)).sum(),
        lambda z: (J.log_softmax(z) * jnp.arange(3.0)).sum(),
        lambda z: J.cross_entropy(z, labels),
    ):
        value, grad = jax.value_and_grad(fn)(logits)
        want_value, want_grad = jax.value_and_grad(fn)(shifted)
        assert np.isfinite(value) and np.all(np.isfinite(grad))
        np.testing.assert_allclose(value, want_value, rtol=1e-6)
        np.testing.assert_allclose(grad, want_grad, atol=1e-7)
    y, grad = jax.value_and_grad(lambda z: J.sigmoid(z).sum())(jnp.array([-1000.0, 1000.0]))
    assert np.isfinite(y) and np.all(np.isfinite(grad))


def test_layer_norm_of_constant_row_is_finite() -> None:
    x, s, b = jnp.full((2, 4), 3.0), jnp.ones(4), jnp.zeros(4)
    grads = jax.grad(lambda *a: (J.layer_norm(*a) ** 2).sum(), argnums=(0, 1, 2))(x, s, b)
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_invalid_inputs_raise_value_error() -> None:
    with pytest.raises(ValueError, match="same shape"):
        J.mse(jnp.ones((3, 1)), jnp.ones(3))
    with pytest.raises(ValueError, match="labels"):
        J.cross_entropy(jnp.ones((2, 3)), jnp.ones(2))
    with pytest.raises(ValueError, match="scale and bias"):
        J.layer_norm(jnp.ones((2, 3)), jnp.ones(4), jnp.zeros(3))
    with pytest.raises(ValueError, match="activation"):
        J.mlp_apply(J.mlp_init(jax.random.PRNGKey(0), (2, 1)), jnp.ones((1, 2)), "gelu")
    with pytest.raises(ValueError, match="same shape"):
        T.mse(torch.ones(3, 1), torch.ones(3))
    with pytest.raises(ValueError, match="labels"):
        T.cross_entropy(torch.ones(2, 3), torch.ones(2))
    with pytest.raises(ValueError, match="sizes"):
        T.MLP([4])


# --- composition ----------------------------------------------------------------------------------


class FlaxMLP(nn.Module):
    """The reference: the same MLP from `nn.Dense` and jax.nn activations."""

    sizes: tuple[int, ...]
    activation: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = {"relu": jax.nn.relu, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid}[self.activation]
        for i, n in enumerate(self.sizes[1:]):
            x = nn.Dense(n, name=f"layers_{i}")(x)
            if i < len(self.sizes) - 2:
                x = act(x)
        return x


def _as_flax(params: J.Params) -> dict[str, Any]:
    """Custom-MLP params (weight [out, in]) as Flax Dense params (kernel [in, out])."""
    return {"params": {k: {"kernel": v["weight"].T, "bias": v["bias"]} for k, v in params.items()}}


SIZES = (3, 16, 16, 2)


def _regression(dtype: Any) -> tuple[jax.Array, jax.Array]:
    x = np.random.default_rng(0).uniform(-1, 1, (64, SIZES[0]))
    y = np.stack([np.sin(2 * x[:, 0]) * x[:, 1], np.cos(x[:, 2])], axis=1)
    return jnp.asarray(x, dtype), jnp.asarray(y, dtype)


def _custom_loss(activation: str) -> Callable[[J.Params, jax.Array, jax.Array], jax.Array]:
    return lambda p, x, y: J.mse(J.mlp_apply(p, x, activation), y)


def _flax_loss(activation: str) -> Callable[[J.Params, jax.Array, jax.Array], jax.Array]:
    model = FlaxMLP(SIZES, activation)
    return lambda p, x, y: jnp.mean((model.apply(_as_flax(p), x) - y) ** 2)


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_mlp_gradients_match_flax_mlp_float64(activation: str) -> None:
    with jax.enable_x64(True):
        params = jax.tree_util.tree_map(
            lambda p: p.astype(jnp.float64), J.mlp_init(jax.random.PRNGKey(1), SIZES)
        )
        x, y = _regression(jnp.float64)
        loss, grads = jax.jit(jax.value_and_grad(_custom_loss(activation)))(params, x, y)
        ref_loss, ref_grads = jax.jit(jax.value_and_grad(_flax_loss(activation)))(params, x, y)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
        for key in params:
            for leaf in ("weight", "bias"):
                np.testing.assert_allclose(
                    grads[key][leaf], ref_grads[key][leaf], rtol=1e-9, atol=1e-13
                )


def test_mlp_trains_under_jit_with_optax() -> None:
    """Adam on the custom-op MLP cuts the loss 20x; at the trained weights the gradients still
    equal those of the Flax MLP (float32, the suite's CPU tolerance)."""
    params = J.mlp_init(jax.random.PRNGKey(0), SIZES)
    x, y = _regression(jnp.float32)
    opt = optax.adam(1e-2)
    loss_fn = _custom_loss("tanh")

    @jax.jit
    def step(p: J.Params, state: optax.OptState) -> tuple[J.Params, optax.OptState, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        updates, state = opt.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss

    state = opt.init(params)
    losses = []
    for _ in range(100):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    assert losses[-1] < losses[0] / 20, losses[:: len(losses) // 5]
    grads = jax.jit(jax.grad(loss_fn))(params, x, y)
    ref_grads = jax.jit(jax.grad(_flax_loss("tanh")))(params, x, y)
    tol = tolerance("float32", "cpu")
    for key in params:
        for leaf in ("weight", "bias"):
            assert_close(f"{key}.{leaf}", ref_grads[key][leaf], grads[key][leaf], tol)


def test_classifier_with_layer_norm_and_cross_entropy_matches_flax_float64() -> None:
    """linear -> layer_norm -> relu -> linear -> cross_entropy, against nn.Dense, nn.LayerNorm,
    jax.nn.relu and optax's integer-label softmax cross-entropy."""

    class FlaxClassifier(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            h = nn.Dense(8, name="hidden")(x)
            h = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name="norm")(h)
            return nn.Dense(5, name="out")(jax.nn.relu(h))

    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        x = jnp.asarray(rng.standard_normal((6, 4)))
        labels = jnp.asarray(rng.integers(0, 5, 6))
        flax_params = jax.tree_util.tree_map(
            lambda p: p.astype(jnp.float64), FlaxClassifier().init(jax.random.PRNGKey(0), x)
        )
        flax_params = jax.tree_util.tree_map_with_path(
            lambda path, p: p + 0.1 if "scale" in jax.tree_util.keystr(path) else p, flax_params
        )

        def custom_loss(variables: Any) -> jax.Array:
            p = variables["params"]
            h = J.linear(x, p["hidden"]["kernel"].T, p["hidden"]["bias"])
            h = J.layer_norm(h, p["norm"]["scale"], p["norm"]["bias"], 1e-5)
            logits = J.linear(J.relu(h), p["out"]["kernel"].T, p["out"]["bias"])
            return J.cross_entropy(logits, labels)

        def flax_loss(variables: Any) -> jax.Array:
            logits = FlaxClassifier().apply(variables, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.jit(jax.value_and_grad(custom_loss))(flax_params)
        ref_loss, ref_grads = jax.jit(jax.value_and_grad(flax_loss))(flax_params)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
        for got, want in zip(
            jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads), strict=True
        ):
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-13)


def test_experiment_runs_and_every_check_passes(capsys: pytest.CaptureFixture[str]) -> None:
    from experiments.autograd import main

    result = main(["--steps", "40", "--log-every", "20", "--hidden", "8", "--samples", "32"])
    assert all(op.check_grads and op.gradcheck for op in result["ops"])
    assert all(op.max_diff < 1e-12 for op in result["ops"])
    assert result["jax_losses"][-1] < result["jax_losses"][0]
    np.testing.assert_allclose(result["jax_losses"], result["torch_losses"], rtol=1e-4)
    assert "cross_entropy" in capsys.readouterr().out
