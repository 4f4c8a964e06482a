"""NCI: neural-collapse inspired score (Liu & Qin, "Detecting Out-of-Distribution Through the Lens of
Neural Collapse", CVPR 2025)."""

from __future__ import annotations

import numpy as np
import torch

from ..features import NetOutputs
from ..schema import NonNegativeFloat
from .base import Postprocessor, as_numpy
from .common import check_fitted, fc_params
from .registry import POSTPROCESSORS


@POSTPROCESSORS.register("nci")
class NCIPostprocessor(Postprocessor):
    """NCI: conf = w_yhat . (z - mu) / ||z - mu|| + alpha ||z||_1, mu the mean ID training feature; higher = more ID.

    The first term is the proximity of the centred feature to its predicted class's weight vector
    (under neural collapse ID features align with it), the second a feature-norm filter.

    Args:
        alpha: weight of the L1-norm term, >= 0 (OpenOOD default 1e-4).
    Needs ``fc_weight`` in the extras (the bias is not used).
    """

    def __init__(self, alpha: NonNegativeFloat = 1e-4):
        self.alpha = float(alpha)
        self._mean: torch.Tensor | None = None

    def fit(self, train_outputs: NetOutputs | None = None, **_):
        if train_outputs is None:
            raise ValueError("nci needs ID training outputs to fit")
        self._mean = train_outputs.features.double().mean(dim=0)
        return self

    def score(self, outputs: NetOutputs) -> np.ndarray:
        check_fitted(self._mean, "nci")
        w, _ = fc_params(outputs, "nci")
        z = outputs.features.double()
        centred = z - self._mean
        pred = outputs.logits.argmax(dim=1)
        proximity = (w[pred] * centred).sum(dim=1) / centred.norm(dim=1)
        return as_numpy(proximity + self.alpha * z.abs().sum(dim=1))
