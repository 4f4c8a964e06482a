"""Deep nearest neighbours (Sun et al., ICML 2022)."""

from __future__ import annotations

import numpy as np

from ..features import NetOutputs
from .base import Postprocessor, as_numpy
from .knn_search import KNNIndex, l2_normalize
from .registry import POSTPROCESSORS


@POSTPROCESSORS.register("knn")
class KNNPostprocessor(Postprocessor):
    """KNN: conf = -||z/||z|| - z_k||, minus the distance to the k-th nearest normalised ID training feature.

    Args:
        k: neighbour rank (OpenOOD v1.5 default 50).
        backend: ``auto`` (faiss when importable), ``faiss`` or ``torch``.
    """

    def __init__(self, k: int = 50, backend: str = "auto"):
        if k < 1:
            raise ValueError(f"knn: k must be >= 1, got {k}")
        self.k, self.backend = int(k), backend
        self._index: KNNIndex | None = None

    def fit(self, train_outputs: NetOutputs | None = None, **_):
        if train_outputs is None:
            raise ValueError("knn needs ID training outputs to fit")
        self._index = KNNIndex(l2_normalize(train_outputs.features), backend=self.backend)
        return self

    def score(self, outputs: NetOutputs) -> np.ndarray:
        if self._index is None:
            raise RuntimeError("knn: call fit() before score()")
        dist = self._index.search(l2_normalize(outputs.features), self.k)
        return as_numpy(-dist[:, -1])
