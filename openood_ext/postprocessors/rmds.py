"""Relative Mahalanobis distance (Ren et al., "A Simple Fix to Mahalanobis Distance for Improving
Near-OOD Detection", arXiv:2106.09022, 2021)."""

from __future__ import annotations

import numpy as np
import torch

from ..features import NetOutputs
from .base import Postprocessor, as_numpy
from .common import ClassGaussians, check_fitted, class_gaussians, full_gaussian, mahalanobis_sq
from .registry import POSTPROCESSORS


@POSTPROCESSORS.register("rmds")
class RMDSPostprocessor(Postprocessor):
    """RMDS: conf = max_c -(MD_c(z) - MD_0(z)), MD_c class-conditional, MD_0 one Gaussian over all ID; higher = more ID.

    MD are squared Mahalanobis distances: MD_c with class means and the shared within-class covariance
    (as ``mds``), MD_0 with the mean and covariance of all ID training features (the background model).
    """

    def __init__(self):
        self._gauss: ClassGaussians | None = None
        self._bg: tuple[torch.Tensor, torch.Tensor] | None = None

    def fit(self, train_outputs: NetOutputs | None = None, **_):
        if train_outputs is None:
            raise ValueError("rmds needs ID training outputs to fit")
        self._gauss = class_gaussians(train_outputs.features, train_outputs.labels, "rmds")
        keep = train_outputs.labels >= 0
        self._bg = full_gaussian(train_outputs.features[keep])
        return self

    def score(self, outputs: NetOutputs) -> np.ndarray:
        check_fitted(self._gauss, "rmds")
        d2 = mahalanobis_sq(outputs.features, self._gauss.means, self._gauss.precision)
        d2_bg = mahalanobis_sq(outputs.features, *self._bg)  # [N, 1]
        return as_numpy(-(d2 - d2_bg).min(dim=1).values)
