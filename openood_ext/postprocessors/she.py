"""SHE: simplified Hopfield energy (Zhang et al., "Out-of-Distribution Detection based on In-Distribution
Data Patterns Memorization with Modern Hopfield Energy", ICLR 2023)."""

from __future__ import annotations

import numpy as np
import torch

from ..features import NetOutputs
from .base import Postprocessor, as_numpy
from .common import check_fitted
from .registry import POSTPROCESSORS

_METRICS = ("inner_product", "euclidean", "cosine")


@POSTPROCESSORS.register("she")
class SHEPostprocessor(Postprocessor):
    """SHE: conf = <z, m_yhat>, m_c the mean feature of correctly classified ID train samples of c; higher = more ID.

    Args:
        metric: ``inner_product`` (default, the paper's energy), ``euclidean`` (-||z - m||) or
            ``cosine``.
    A class with no correctly classified training sample uses all its training samples; a class with
    none at all cannot be stored and fails ``fit``.
    """

    def __init__(self, metric: str = "inner_product"):
        if metric not in _METRICS:
            raise ValueError(f"she: metric must be one of {', '.join(_METRICS)}, got {metric!r}")
        self.metric = metric
        self._patterns: torch.Tensor | None = None

    def fit(self, train_outputs: NetOutputs | None = None, **_):
        if train_outputs is None or train_outputs.labels is None:
            raise ValueError("she needs labelled ID training outputs to fit")
        z, y = train_outputs.features.double(), train_outputs.labels
        preds = train_outputs.preds
        patterns = []
        for c in range(train_outputs.logits.shape[1]):
            mask = (y == c) & (preds == c)
            if not mask.any():
                mask = y == c
            if not mask.any():
                raise ValueError(f"she: class {c} has no ID training sample")
            patterns.append(z[mask].mean(dim=0))
        self._patterns = torch.stack(patterns)
        return self

    def score(self, outputs: NetOutputs) -> np.ndarray:
        check_fitted(self._patterns, "she")
        z = outputs.features.double()
        m = self._patterns[outputs.preds]
        if self.metric == "inner_product":
            conf = (z * m).sum(dim=1)
        elif self.metric == "euclidean":
            conf = -(z - m).norm(dim=1)
        else:
            conf = torch.nn.functional.cosine_similarity(z, m, dim=1)
        return as_numpy(conf)
