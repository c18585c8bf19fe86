"""Training library, PyTorch twin of `jaxml.training`: optimizers and schedulers matching the
optax ones, train state, losses, steps, checkpoints and the `fit` loop.

Configs (`jaxml.configs`) and logging (`jaxml.training.logging`) import neither framework
and are shared with jaxml.
"""
