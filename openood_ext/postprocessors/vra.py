"""VRA: variational rectified activations (Xu, Lian, Liu & Tao, "VRA: Variational Rectified Activation
for Out-of-distribution Detection", NeurIPS 2023)."""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..features import NetOutputs
from ..schema import Percentile
from .base import Postprocessor, as_numpy
from .common import check_fitted, energy, fc_params, fit_outputs, linear_logits
from .registry import POSTPROCESSORS


@POSTPROCESSORS.register("vra")
class VRAPostprocessor(Postprocessor):
    """VRA: conf = logsumexp(W g(z) + b), g(z) = 0 below the low threshold, min(z, high) above it; higher = more ID.

    The thresholds are the ``percentile_low``-th and ``percentile_high``-th percentiles of all ID
    feature values. The paper's VRA suppresses abnormally low activations (sets them to 0) and clips
    abnormally high ones (ReAct).

    Args:
        percentile_high, percentile_low: in [0, 100], low < high (OpenOOD defaults 90 and 10).
        low: ``zero`` (default, the paper: activations below the low threshold become 0) or ``clip``
            (OpenOOD v1.5's code: they are raised to the low threshold, ``z.clip(low, high)``).
        fit_on: ``val`` (default, as OpenOOD v1.5 and this toolkit's ReAct) or ``train``.
    Needs ``fc_weight``/``fc_bias`` in the extras.
    """

    def __init__(self, percentile_high: Percentile = 90, percentile_low: Percentile = 10,
                 low: Literal["zero", "clip"] = "zero", fit_on: Literal["train", "val"] = "val"):
        if not percentile_low < percentile_high:
            raise ValueError(f"vra: percentile_low ({percentile_low}) must be below percentile_high "
                             f"({percentile_high})")
        self.percentile_high, self.percentile_low = float(percentile_high), float(percentile_low)
        self.low, self.fit_on = low, fit_on
        self.threshold_high: float | None = None
        self.threshold_low: float | None = None

    def fit(self, train_outputs: NetOutputs | None = None, val_outputs: NetOutputs | None = None, **_):
        values = fit_outputs(train_outputs, val_outputs, self.fit_on, "vra").features.double().numpy().ravel()
        self.threshold_high = float(np.percentile(values, self.percentile_high))
        self.threshold_low = float(np.percentile(values, self.percentile_low))
        return self

    def score(self, outputs: NetOutputs) -> np.ndarray:
        check_fitted(self.threshold_high, "vra")
        w, b = fc_params(outputs, "vra")
        z = outputs.features.double()
        rectified = z.clamp(min=self.threshold_low, max=self.threshold_high)
        if self.low == "zero":
            rectified = rectified.masked_fill(z < self.threshold_low, 0.0)
        return as_numpy(energy(linear_logits(rectified, w, b)))
