"""Complete models built from `jaxml.layers`; each has a PyTorch twin in `torchref.models`."""

from jaxml.models.regression import LinearRegressor, MLPRegressor

__all__ = ["LinearRegressor", "MLPRegressor"]
