"""Complete models, PyTorch twins of `jaxml.models` (same parameter names after conversion)."""

from torchref.models.cnn import CNNClassifier
from torchref.models.generation import (
    generate,
    generate_recompute,
    predict_autoregressively,
    predict_autoregressively_recompute,
)
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
    "generate_recompute",
    "predict_autoregressively",
    "predict_autoregressively_recompute",
]
