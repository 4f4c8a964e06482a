"""SSD: Mahalanobis distance to clusters of normalised features (Sehwag, Chiang & Mittal, "SSD: A Unified
Framework for Self-Supervised Outlier Detection", ICLR 2021), as a post-hoc score on a classifier's
penultimate features (the paper's evaluation, ``get_eval_results``, applied to any feature extractor)."""

from __future__ import annotations

import numpy as np
import torch

from ..features import NetOutputs
from ..schema import NonNegativeInt, PositiveInt
from .base import Postprocessor, as_numpy
from .common import _pinvh, check_fitted, mahalanobis_sq, unit_rows
from .registry import POSTPROCESSORS


@POSTPROCESSORS.register("ssd")
class SSDPostprocessor(Postprocessor):
    """SSD: conf = -min_m (u - mu_m)^T S_m^+ (u - mu_m), u the L2-normalised then standardised feature, m its clusters; higher = more ID.

    Features are L2-normalised and standardised with the ID training mean and std; the ID training
    features are split into ``clusters`` k-means clusters (sklearn, seeded), each with its own mean and
    (biased) covariance; a sample's distance is its smallest squared Mahalanobis distance.

    Args:
        clusters: k-means clusters (the paper's default 1: one Gaussian).
        use_labels: cluster by the ID class labels instead (the paper's SSD+, labels available).
        seed: k-means ``random_state``.

    OpenOOD v1.5's ``ssd`` postprocessor fits statistics in ``setup`` but has no ``postprocess`` of its
    own, so it scores with the inherited MSP; use ``msp`` for those numbers.
    """

    def __init__(self, clusters: PositiveInt = 1, use_labels: bool = False, seed: NonNegativeInt = 0):
        self.clusters, self.use_labels, self.seed = int(clusters), bool(use_labels), int(seed)
        self._mean = self._std = self._means = self._precisions = None

    def _standardise(self, features: torch.Tensor) -> torch.Tensor:
        return (unit_rows(features) - self._mean) / (self._std + 1e-10)

    def fit(self, train_outputs: NetOutputs | None = None, **_):
        if train_outputs is None:
            raise ValueError("ssd needs ID training outputs to fit")
        u = unit_rows(train_outputs.features)
        self._mean, self._std = u.mean(dim=0), u.std(dim=0, unbiased=False)
        u = self._standardise(train_outputs.features)
        if self.use_labels:
            if train_outputs.labels is None:
                raise ValueError("ssd: use_labels needs labelled ID training outputs")
            assign = train_outputs.labels.long().numpy()
        elif self.clusters == 1:
            assign = np.zeros(len(u), dtype=int)
        else:
            from sklearn.cluster import KMeans
            if self.clusters > len(u):
                raise ValueError(f"ssd: {self.clusters} clusters for {len(u)} ID training samples")
            assign = KMeans(n_clusters=self.clusters, n_init=10, random_state=self.seed).fit_predict(u.numpy())
        means, precisions = [], []
        for c in np.unique(assign[assign >= 0]):
            x = u[torch.from_numpy(assign == c)]
            mu = x.mean(dim=0)
            centred = x - mu
            means.append(mu)
            precisions.append(torch.from_numpy(_pinvh((centred.T @ centred / len(x)).numpy())))
        self._means, self._precisions = means, precisions
        return self

    def score(self, outputs: NetOutputs) -> np.ndarray:
        check_fitted(self._means, "ssd")
        u = self._standardise(outputs.features)
        d2 = torch.cat([mahalanobis_sq(u, m, p) for m, p in zip(self._means, self._precisions)], dim=1)
        return as_numpy(-d2.min(dim=1).values)
