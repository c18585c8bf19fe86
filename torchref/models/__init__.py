"""Complete models, PyTorch twins of `jaxml.models` (same parameter names after conversion)."""

from torchref.models.cnn import CNNClassifier
from torchref.models.generation import (
    generate,
    generate_recompute,
    predict_autoregressively,
    predict_autoregressively_recompute,
)
from torchref.models.lm import LM, SOTATransformer
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
    "LM",
    "LinearRegressor",
    "MLPRegressor",
    "SOTATransformer",
    "TransformerModel",
    "generate",
    "generate_recompute",
    "predict_autoregressively",
    "predict_autoregressively_recompute",
]
