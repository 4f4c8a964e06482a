"""SCALE: activation scaling (Xu et al., "Scaling for Training Time and Post-hoc Out-of-distribution
Detection Enhancement", ICLR 2024), on the pooled penultimate feature as in OpenOOD v1.5."""

from __future__ import annotations

import numpy as np
import torch

from ..features import NetOutputs
from ..schema import Percentile
from .base import Postprocessor, as_numpy
from .common import energy, fc_params, linear_logits
from .registry import POSTPROCESSORS


def scale_features(features: torch.Tensor, percentile: float) -> torch.Tensor:
    """SCALE per row: ``z * exp(s1 / s2)``, s1 = sum(z), s2 = sum of the k = D - round(D p / 100) largest
    entries (the ASH pruning keeps them; SCALE keeps every entry and only rescales). float64 [N, D]."""
    x = features.double()
    d = x.shape[1]
    k = d - int(np.round(d * percentile / 100.0))
    if k < 1:
        raise ValueError(f"scale: percentile {percentile} keeps no activation of {d}")
    s2 = x.topk(k, dim=1).values.sum(dim=1)
    return x * torch.exp(x.sum(dim=1) / s2)[:, None]


@POSTPROCESSORS.register("scale")
class ScalePostprocessor(Postprocessor):
    """SCALE: conf = logsumexp(W z exp(s1/s2) + b), s1 = sum(z), s2 = sum of the top (100-p)% of z; higher = more ID.

    Args:
        percentile: p, the share of activations left out of s2, in [0, 100) (OpenOOD default 85, the
            paper's ImageNet value).
    Works from cached features; needs ``fc_weight``/``fc_bias`` in the extras. The scale factor
    ``exp(s1/s2)`` is >= e for non-negative (post-ReLU) features; with signed features s2 may be
    near 0 and the factor unbounded, as in the paper and OpenOOD.
    """

    def __init__(self, percentile: Percentile = 85):
        if not 0 <= percentile < 100:
            raise ValueError(f"scale: percentile must be in [0, 100), got {percentile}")
        self.percentile = float(percentile)

    def score(self, outputs: NetOutputs) -> np.ndarray:
        w, b = fc_params(outputs, "scale")
        return as_numpy(energy(linear_logits(scale_features(outputs.features, self.percentile), w, b)))
