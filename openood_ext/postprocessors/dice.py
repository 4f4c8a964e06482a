"""DICE: directed sparsification of the last layer (Sun & Li, "DICE: Leveraging Sparsification for
Out-of-Distribution Detection", ECCV 2022)."""

from __future__ import annotations

import numpy as np
import torch

from ..schema import Percentile
from ..features import NetOutputs
from .base import Postprocessor, as_numpy
from .common import check_fitted, energy, fc_params, linear_logits
from .registry import POSTPROCESSORS


def dice_mask(mean_feature: torch.Tensor, w: torch.Tensor, p: float) -> torch.Tensor:
    """Boolean [C, D] mask keeping weights whose contribution ``mean_feature_j * W_cj`` is above the
    p-th percentile of all C*D contributions."""
    contrib = (mean_feature.double()[None, :] * w.double()).numpy()
    return torch.from_numpy(contrib > np.percentile(contrib, p))


@POSTPROCESSORS.register("dice")
class DICEPostprocessor(Postprocessor):
    """DICE: conf = logsumexp((W * M) z + b), M keeps the top (100-p)% contributions mean(z)_j W_cj; higher = more ID.

    Args:
        p: sparsity percentile (OpenOOD default 90: keep the 10% largest contributions).
    The mean feature is taken over ID training outputs; needs ``fc_weight``/``fc_bias`` in the extras.
    """

    def __init__(self, p: Percentile = 90):
        if not 0 <= p <= 100:
            raise ValueError(f"dice: p must be in [0, 100], got {p}")
        self.p = float(p)
        self._mean: torch.Tensor | None = None

    def fit(self, train_outputs: NetOutputs | None = None, **_):
        if train_outputs is None:
            raise ValueError("dice needs ID training outputs to fit")
        self._mean = train_outputs.features.double().mean(dim=0)
        return self

    def score(self, outputs: NetOutputs) -> np.ndarray:
        check_fitted(self._mean, "dice")
        w, b = fc_params(outputs, "dice")
        masked = w * dice_mask(self._mean, w, self.p)
        return as_numpy(energy(linear_logits(outputs.features, masked, b)))
