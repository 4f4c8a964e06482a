"""Mahalanobis distance score (Lee et al., "A Simple Unified Framework for Detecting Out-of-Distribution
Samples and Adversarial Attacks", NeurIPS 2018), on the penultimate features, without input
preprocessing or layer ensembling (those are ``mds_ensemble``)."""

from __future__ import annotations

import numpy as np

from ..features import NetOutputs
from .base import Postprocessor, as_numpy
from .common import ClassGaussians, check_fitted, class_gaussians, mahalanobis_sq
from .registry import POSTPROCESSORS


@POSTPROCESSORS.register("mds", aliases=["mahalanobis"])
class MDSPostprocessor(Postprocessor):
    """MDS: conf = max_c -(z - mu_c)^T S^+ (z - mu_c), class means mu_c and shared covariance S; higher = more ID.

    Fitted on labelled ID training features (float64; ``S^+`` is the pseudo-inverse of the
    maximum-likelihood within-class covariance, as sklearn's ``EmpiricalCovariance``).
    """

    def __init__(self):
        self._gauss: ClassGaussians | None = None

    def fit(self, train_outputs: NetOutputs | None = None, **_):
        if train_outputs is None:
            raise ValueError("mds needs ID training outputs to fit")
        self._gauss = class_gaussians(train_outputs.features, train_outputs.labels, "mds")
        return self

    def score(self, outputs: NetOutputs) -> np.ndarray:
        check_fitted(self._gauss, "mds")
        d2 = mahalanobis_sq(outputs.features, self._gauss.means, self._gauss.precision)
        return as_numpy(-d2.min(dim=1).values)
