"""Complete models built from `jaxml.layers`; each has a PyTorch twin in `torchref.models`."""

from jaxml.models.cnn import CNNClassifier
from jaxml.models.generation import (
    generate,
    generate_recompute,
    predict_autoregressively,
    predict_autoregressively_recompute,
)
from jaxml.models.lm import LM, SOTATransformer
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
