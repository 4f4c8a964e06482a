"""ReAct: rectified activations (Sun, Guo & Li, "ReAct: Out-of-distribution Detection With Rectified
Activations", NeurIPS 2021)."""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..schema import Percentile
from ..features import NetOutputs
from .base import Postprocessor, as_numpy
from .common import check_fitted, energy, fc_params, fit_outputs, linear_logits
from .registry import POSTPROCESSORS


@POSTPROCESSORS.register("react")
class ReActPostprocessor(Postprocessor):
    """ReAct: conf = logsumexp(W min(z, c) + b), c = the percentile-th percentile of ID features; higher = more ID.

    Args:
        percentile: percentile of all ID feature values used as the clipping threshold c (OpenOOD
            default 90).
        fit_on: ``val`` (default, as OpenOOD v1.5: the percentile over the ID validation features, so
            numbers compare with its tables) or ``train`` (as the ReAct paper).
    Needs ``fc_weight``/``fc_bias`` in the outputs' extras.
    """

    def __init__(self, percentile: Percentile = 90, fit_on: Literal["train", "val"] = "val"):
        if not 0 <= percentile <= 100:
            raise ValueError(f"react: percentile must be in [0, 100], got {percentile}")
        if fit_on not in ("train", "val"):
            raise ValueError(f"react: fit_on must be 'train' or 'val', got {fit_on!r}")
        self.percentile, self.fit_on = float(percentile), fit_on
        self.threshold: float | None = None

    def fit(self, train_outputs: NetOutputs | None = None, val_outputs: NetOutputs | None = None, **_):
        out = fit_outputs(train_outputs, val_outputs, self.fit_on, "react")
        self.threshold = float(np.percentile(out.features.double().numpy().ravel(), self.percentile))
        return self

    def score(self, outputs: NetOutputs) -> np.ndarray:
        check_fitted(self.threshold, "react")
        w, b = fc_params(outputs, "react")
        clipped = outputs.features.double().clamp(max=self.threshold)
        return as_numpy(energy(linear_logits(clipped, w, b)))
