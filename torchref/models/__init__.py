"""Complete models, PyTorch twins of `jaxml.models` (same parameter names after conversion)."""

from torchref.models.regression import LinearRegressor, MLPRegressor

__all__ = ["LinearRegressor", "MLPRegressor"]
