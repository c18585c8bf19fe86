"""Training library: train state, losses, optax optimizers, jitted steps, data parallelism
(mesh and pmap), orbax checkpoints, tensorboardX logging and the `fit` loop.

Submodules are imported directly (`from jaxml.training.step import make_train_step`);
`config` and `logging` import no jax, so torchref uses them too.
"""
