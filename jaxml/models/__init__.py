"""Complete models built from `jaxml.layers`; each has a PyTorch twin in `torchref.models`."""

from jaxml.models.cnn import CNNClassifier
from jaxml.models.generation import generate, predict_autoregressively
from jaxml.models.regression import LinearRegressor, MLPRegressor
from jaxml.models.transformer import (
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
