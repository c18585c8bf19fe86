"""`python -m experiments.autograd`: the custom-gradient ops, checked, then composed and trained.

Part 1 runs every `jaxml.autograd` op on a small float64 example and prints its value, the
gradient of `Σ c·op(...)` (c = 1, 2, 3, … over the output) w.r.t. each input, `jax.test_util.check_grads` (reverse mode, the only
mode a custom_vjp has), `torch.autograd.gradcheck` of the `torchref.autograd` twin, and the largest
difference between the JAX and torch values and gradients.
Part 2 trains the MLP made only of custom ops (`linear`, `tanh`, `mse`) on a small regression task
(y = sin 3x₀ + x₁²/2) from the same initial weights, with optax Adam under `jax.jit` and with
`torch.optim.Adam` through the `torch.autograd.Function`s, and prints both loss curves.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from jax.test_util import check_grads
from rich.console import Console
from rich.table import Table

import jaxml.autograd as J
import torchref.autograd as T
from experiments.flags import nonneg_int, positive_float, positive_int
from torchref.convert import load_jaxml_params

LABELS = np.array([2, 0, 1])


@dataclass(frozen=True)
class Demo:
    name: str
    jax_fn: Callable[..., Any]
    torch_fn: Callable[..., Any]
    inputs: Callable[[np.random.Generator], tuple[np.ndarray, ...]]


def _vec(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    return (np.array([-1.5, -0.5, 0.5, 1.5]),)


DEMOS = [
    Demo(
        "linear",
        J.linear,
        T.linear,
        lambda r: (r.standard_normal((2, 3)), r.standard_normal((4, 3)), r.standard_normal(4)),
    ),
    Demo("relu", J.relu, T.relu, _vec),
    Demo("square", J.square, T.square, _vec),
    Demo("power", J.power, T.power, lambda r: (np.array([0.5, 1.0, 1.5, 2.0]), np.array(2.5))),
    Demo("exp", J.exp, T.exp, _vec),
    Demo("sigmoid", J.sigmoid, T.sigmoid, _vec),
    Demo("tanh", J.tanh, T.tanh, _vec),
    Demo("softmax", J.softmax, T.softmax, _vec),
    Demo("log_softmax", J.log_softmax, T.log_softmax, _vec),
    Demo(
        "cross_entropy",
        lambda x: J.cross_entropy(x, jnp.asarray(LABELS)),
        lambda x: T.cross_entropy(x, torch.from_numpy(LABELS)),
        lambda r: (r.standard_normal((3, 4)),),
    ),
    Demo("mse", J.mse, T.mse, lambda r: (r.standard_normal(4), r.standard_normal(4))),
    Demo(
        "layer_norm",
        J.layer_norm,
        T.layer_norm,
        lambda r: (r.standard_normal((2, 4)), 1 + 0.1 * r.standard_normal(4), r.standard_normal(4)),
    ),
]


def _short(a: Any) -> str:
    flat = np.ravel(np.asarray(a))
    text = np.array2string(flat[:4], precision=3, suppress_small=True, separator=" ")
    shape = "x".join(map(str, np.shape(a))) or "scalar"
    return f"{shape} {text[:-1]}{' …]' if flat.size > 4 else ']'}"


@dataclass(frozen=True)
class OpResult:
    name: str
    value: str
    grads: str
    check_grads: bool
    gradcheck: bool
    max_diff: float


def check_op(demo: Demo, rng: np.random.Generator) -> OpResult:
    """Value, gradients and both gradient checks of one op, all in float64."""
    arrays = demo.inputs(rng)
    with jax.enable_x64(True):
        args = [jnp.asarray(a, jnp.float64) for a in arrays]
        value = demo.jax_fn(*args)
        weights = jnp.arange(1, value.size + 1, dtype=jnp.float64).reshape(value.shape)
        grads = jax.grad(
            lambda *a: jnp.sum(weights * demo.jax_fn(*a)), argnums=tuple(range(len(args)))
        )(*args)
        try:
            check_grads(demo.jax_fn, args, order=1, modes=("rev",))
            jax_ok = True
        except AssertionError:
            jax_ok = False
        value_np, grads_np = np.asarray(value), [np.asarray(g) for g in grads]
        weights_np = np.array(weights)
    t_args = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    torch_ok = bool(torch.autograd.gradcheck(demo.torch_fn, tuple(t_args), raise_exception=False))
    t_value = demo.torch_fn(*t_args)
    t_grads = torch.autograd.grad((t_value * torch.from_numpy(weights_np)).sum(), t_args)
    diffs = [np.abs(value_np - t_value.detach().numpy()).max()] + [
        np.abs(g - t.numpy()).max() for g, t in zip(grads_np, t_grads, strict=True)
    ]
    return OpResult(
        demo.name,
        _short(value_np),
        "\n".join(_short(g) for g in grads_np),
        jax_ok,
        torch_ok,
        float(max(diffs)),
    )


def regression_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`x ~ U(-1, 1)^[n, 2]`, `y = sin(3 x₀) + x₁² / 2` as `[n, 1]`, float32."""
    x = np.random.default_rng(seed).uniform(-1, 1, (n, 2)).astype(np.float32)
    y = (np.sin(3 * x[:, :1]) + 0.5 * x[:, 1:] ** 2).astype(np.float32)
    return x, y


def train_jax(
    params: J.Params, x: np.ndarray, y: np.ndarray, steps: int, lr: float, activation: str
) -> list[float]:
    """Full-batch Adam on `mse(mlp_apply(params, x), y)`, one jitted step; losses before each step."""
    opt = optax.adam(lr)

    def loss_fn(p: J.Params) -> jax.Array:
        return J.mse(J.mlp_apply(p, jnp.asarray(x), activation), jnp.asarray(y))

    @jax.jit
    def step(p: J.Params, state: optax.OptState) -> tuple[J.Params, optax.OptState, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, state = opt.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss

    state = opt.init(params)
    losses = []
    for _ in range(steps):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    return losses


def train_torch(
    params: J.Params,
    x: np.ndarray,
    y: np.ndarray,
    steps: int,
    lr: float,
    activation: str,
    threads: int = 1,
) -> list[float]:
    """The same run with `torchref.autograd.MLP` and `torch.optim.Adam`, from the same weights.

    Runs on `threads` intra-op threads (restored afterwards): at these sizes extra threads only
    add synchronisation, and on a busy 2-core machine they made the run 20x slower.
    """
    sizes = [x.shape[1]] + [params[f"layers_{i}"]["bias"].shape[0] for i in range(len(params))]
    model = T.MLP(sizes, activation)
    load_jaxml_params(model, jax.tree_util.tree_map(np.asarray, params))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    losses = []
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(steps):
            opt.zero_grad()
            loss = T.mse(model(tx), ty)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(previous)
    return losses


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.autograd", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--steps", type=positive_int, default=500, help="training steps")
    parser.add_argument("--lr", type=positive_float, default=1e-2, help="Adam learning rate")
    parser.add_argument("--hidden", type=positive_int, default=32, help="hidden layer width")
    parser.add_argument("--samples", type=positive_int, default=256, help="training points")
    parser.add_argument("--activation", default="tanh", choices=sorted(J.ACTIVATIONS))
    parser.add_argument("--log-every", type=positive_int, default=50, help="print every N steps")
    parser.add_argument("--seed", type=nonneg_int, default=0)
    parser.add_argument(
        "--torch-threads", type=positive_int, default=1, help="torch intra-op threads"
    )
    args = parser.parse_args(argv)
    console = Console(width=140)

    rng = np.random.default_rng(args.seed)
    ops = [check_op(demo, rng) for demo in DEMOS]
    table = Table(
        title="custom ops, float64: value, d(Σ c·op)/d input for c = 1, 2, 3, … (one line per input)"
    )
    for col in ("op", "value", "gradients", "check_grads (rev)", "gradcheck", "max |jax − torch|"):
        table.add_column(col)
    for r in ops:
        table.add_row(
            r.name,
            r.value,
            r.grads,
            "pass" if r.check_grads else "FAIL",
            "pass" if r.gradcheck else "FAIL",
            f"{r.max_diff:.1e}",
        )
    console.print(table)

    x, y = regression_data(args.samples, args.seed)
    params = J.mlp_init(jax.random.PRNGKey(args.seed), (2, args.hidden, args.hidden, 1))
    start = time.perf_counter()
    jax_losses = train_jax(params, x, y, args.steps, args.lr, args.activation)
    jax_s = time.perf_counter() - start
    start = time.perf_counter()
    torch_losses = train_torch(
        params, x, y, args.steps, args.lr, args.activation, args.torch_threads
    )
    torch_s = time.perf_counter() - start
    curve = Table(
        title=f"custom-op MLP 2-{args.hidden}-{args.hidden}-1 ({args.activation}), "
        f"{args.samples} points, Adam lr={args.lr}: mse before each step"
    )
    for col in ("step", "jax (jit)", "torch (Functions)", "|diff|"):
        curve.add_column(col, justify="right")
    logged = sorted({*range(0, args.steps, args.log_every), args.steps - 1})
    for i in logged:
        curve.add_row(
            str(i),
            f"{jax_losses[i]:.6f}",
            f"{torch_losses[i]:.6f}",
            f"{abs(jax_losses[i] - torch_losses[i]):.1e}",
        )
    console.print(curve)
    console.print(
        f"{args.steps} steps: jax {jax_s:.2f} s (incl. compile), "
        f"torch {torch_s:.2f} s ({args.torch_threads} thread(s)); "
        f"mse {jax_losses[0]:.4f} -> {jax_losses[-1]:.2e} (jax), "
        f"{torch_losses[0]:.4f} -> {torch_losses[-1]:.2e} (torch)"
    )
    return {"ops": ops, "jax_losses": jax_losses, "torch_losses": torch_losses}


if __name__ == "__main__":
    main()
