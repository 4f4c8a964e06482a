"""ASH: activation shaping (Djurisic et al., "Extremely Simple Activation Shaping for Out-of-Distribution
Detection", ICLR 2023), variant ASH-B on the pooled penultimate feature as in OpenOOD v1.5."""

from __future__ import annotations

import numpy as np
import torch

from ..schema import Percentile
from ..features import NetOutputs
from .base import Postprocessor, as_numpy
from .common import energy, fc_params, linear_logits
from .registry import POSTPROCESSORS


def ash_b(features: torch.Tensor, percentile: float) -> torch.Tensor:
    """ASH-B per row: keep the k = D - round(D * percentile / 100) largest entries, set each to
    sum(row) / k, zero the rest (ties broken towards the lower index). float64 [N, D]."""
    x = features.double()
    d = x.shape[1]
    k = d - int(np.round(d * percentile / 100.0))
    if k < 1:
        raise ValueError(f"ash: percentile {percentile} keeps no activation of {d}")
    top = x.sort(dim=1, descending=True, stable=True).indices[:, :k]
    fill = (x.sum(dim=1) / k)[:, None].expand(-1, k)
    return torch.zeros_like(x).scatter_(1, top, fill)


@POSTPROCESSORS.register("ash")
class ASHPostprocessor(Postprocessor):
    """ASH: conf = logsumexp(W ash_b(z) + b), ash_b sets the top (100-p)% of z to sum(z)/k, the rest 0; higher = more ID.

    Args:
        percentile: share of activations pruned, in [0, 100) (OpenOOD default 90).
    Works from cached features (OpenOOD applies ASH-B to the pooled feature, not the feature map);
    needs ``fc_weight``/``fc_bias`` in the extras.
    """

    def __init__(self, percentile: Percentile = 90):
        if not 0 <= percentile < 100:
            raise ValueError(f"ash: percentile must be in [0, 100), got {percentile}")
        self.percentile = float(percentile)

    def score(self, outputs: NetOutputs) -> np.ndarray:
        w, b = fc_params(outputs, "ash")
        return as_numpy(energy(linear_logits(ash_b(outputs.features, self.percentile), w, b)))
