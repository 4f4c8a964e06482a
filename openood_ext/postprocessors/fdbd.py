"""fDBD: fast decision-boundary distances (Liu & Qin, "Fast Decision Boundary based Out-of-Distribution
Detector", ICML 2024)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from ..features import NetOutputs
from .base import Postprocessor, as_numpy
from .common import check_fitted, fc_params, linear_logits
from .registry import POSTPROCESSORS


def boundary_distances(features: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``|l_yhat - l_c| / ||w_yhat - w_c||`` for every class c (0 at c = yhat), the feature's distance to
    the decision boundary between its predicted class and c; float64 [N, C]."""
    logits = linear_logits(features, w, b)
    top, pred = logits.max(dim=1)
    gap = (top[:, None] - logits).abs()
    norms = (w.double()[pred][:, None, :] - w.double()[None, :, :]).norm(dim=2)  # [N, C]
    return gap / torch.where(norms > 0, norms, torch.ones_like(norms))


@POSTPROCESSORS.register("fdbd")
class FDBDPostprocessor(Postprocessor):
    """fDBD: conf = mean_{c != yhat} |l_yhat - l_c| / ||w_yhat - w_c|| / ||z - mu||, mu the mean ID training feature; higher = more ID.

    Args:
        normalizer: ``distance_to_mean`` (default, the paper: ``||z - mu_train||``) or ``norm``
            (``||z||``, which OpenOOD v1.5 offers and picks between on ID/OOD validation data).
        reduce: ``mean`` over the C - 1 other classes (default, the paper's formula) or ``sum``
            (OpenOOD v1.5's code; the same ranking, scores C - 1 times larger).
    Needs ``fc_weight``/``fc_bias`` in the extras.
    """

    def __init__(self, normalizer: Literal["distance_to_mean", "norm"] = "distance_to_mean",
                 reduce: Literal["mean", "sum"] = "mean"):
        self.normalizer, self.reduce = normalizer, reduce
        self._mean: torch.Tensor | None = None

    def fit(self, train_outputs: NetOutputs | None = None, **_):
        if train_outputs is None:
            raise ValueError("fdbd needs ID training outputs to fit")
        self._mean = train_outputs.features.double().mean(dim=0)
        return self

    def score(self, outputs: NetOutputs) -> np.ndarray:
        check_fitted(self._mean, "fdbd")
        w, b = fc_params(outputs, "fdbd")
        z = outputs.features.double()
        total = boundary_distances(z, w, b).sum(dim=1)
        if self.reduce == "mean":
            total = total / max(w.shape[0] - 1, 1)
        denom = (z - self._mean).norm(dim=1) if self.normalizer == "distance_to_mean" else z.norm(dim=1)
        return as_numpy(total / denom)
