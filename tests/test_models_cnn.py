"""CNNClassifier: config validation, shapes, and that it learns a spatial task."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxml.configs import CNNConfig
from jaxml.models import CNNClassifier


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"kernel_size": 4}, "kernel_size"),
        ({"channels": ()}, "channels"),
        ({"channels": (4, 0)}, "channels"),
        ({"image_size": (3, 8)}, "image_size"),
        ({"hidden_dims": (-1,)}, "hidden_dims"),
        ({"activation": "swish"}, "activation"),
    ],
)
def test_config_rejects_bad_values(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"CNNConfig.{field}="):
        CNNConfig(**{"in_channels": 1, "image_size": 8, **changes})


def test_shapes() -> None:
    cfg = CNNConfig(
        in_channels=3, image_size=(9, 7), channels=(4, 5), hidden_dims=(6,), num_classes=3
    )
    assert cfg.image_size == (9, 7) and cfg.feature_shape == (2, 1, 5)
    shapes = jax.tree_util.tree_map(
        jnp.shape,
        jax.eval_shape(CNNClassifier(cfg).init, jax.random.key(0), jnp.zeros((2, 9, 7, 3))),
    )["params"]
    assert shapes["convs_0"]["kernel"] == (3, 3, 3, 4)  # HWIO
    assert shapes["hidden_0"]["kernel"] == (2 * 1 * 5, 6)
    assert shapes["head"]["kernel"] == (6, 3)
    with pytest.raises(ValueError, match="NHWC"):
        CNNClassifier(cfg).init(jax.random.key(0), jnp.zeros((2, 3, 9, 7)))


def test_learns_which_half_holds_the_bright_spot() -> None:
    """Class = whether the single lit pixel is in the left or right half: needs spatial features."""
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 8, 64), rng.integers(0, 8, 64)
    x = np.zeros((64, 8, 8, 1), np.float32)
    x[np.arange(64), rows, cols, 0] = 1.0
    labels = jnp.asarray(cols >= 4, jnp.int32)
    model = CNNClassifier(
        CNNConfig(in_channels=1, image_size=8, num_classes=2, channels=(4,), hidden_dims=(8,))
    )
    params = model.init(jax.random.key(0), x)["params"]
    opt = optax.adam(0.03)

    def loss_fn(p: dict) -> jax.Array:
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def step(carry: tuple, _: None) -> tuple:
        p, s = carry
        updates, s = opt.update(jax.grad(loss_fn)(p), s, p)
        return (optax.apply_updates(p, updates), s), None

    (params, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=60))(
        (params, opt.init(params))
    )
    accuracy = float(jnp.mean(jnp.argmax(model.apply({"params": params}, x), -1) == labels))
    assert accuracy >= 0.95
