"""Complete models, PyTorch twins of `jaxml.models` (same parameter names after conversion)."""

from torchref.models.cnn import CNNClassifier
from torchref.models.generation import generate, predict_autoregressively
from torchref.models.regression import LinearRegressor, MLPRegressor
from torchref.models.transformer import (
    AutoregressiveTransformerModel,
    EncoderDecoder,
    TransformerModel,
)

__all__ = [
    "AutoregressiveTransformerModel",
    "CNNClassifier",
    "EncoderDecoder",
    "LinearRegressor",
    "MLPRegressor",
    "TransformerModel",
    "generate",
    "predict_autoregressively",
]
