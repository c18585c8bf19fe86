"""jaxml == torchref for the CNN: NHWC vs NCHW, exact conv/dense conversion, non-square images."""

from __future__ import annotations

import jax
import numpy as np

from jaxml.configs import CNNConfig
from jaxml.models import cnn as jcnn
from parity.harness import check_parity
from torchref.convert import jaxml_params_from
from torchref.models import cnn as tcnn

# 9x7 with two poolings -> 2x1 feature maps: a height/width or flatten-order slip shows up.
CFG = CNNConfig(in_channels=2, image_size=(9, 7), num_classes=3, channels=(4, 5), hidden_dims=(6,))
X = np.random.default_rng(0).standard_normal((2, 9, 7, 2)).astype(np.float32)  # NHWC


def test_cnn_classifier(device: str) -> None:
    model, torch_model = jcnn.CNNClassifier(CFG), tcnn.CNNClassifier(CFG)
    params = jaxml_params_from(torch_model, jax.eval_shape(model.init, jax.random.key(0), X))
    check_parity(
        jax.jit(lambda p, x: model.apply({"params": p}, x)),
        params,
        torch_model,
        lambda m, x: m(x.permute(0, 3, 1, 2).contiguous()),
        [X],
        device=device,
    )
