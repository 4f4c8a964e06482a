"""Deep nearest neighbours (Sun et al., ICML 2022)."""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..schema import PositiveFloat, PositiveInt
from ..features import NetOutputs
from ..utils.runtime import get_logger
from .base import Postprocessor, as_numpy
from .knn_search import KNNIndex, l2_normalize
from .registry import POSTPROCESSORS


@POSTPROCESSORS.register("knn")
class KNNPostprocessor(Postprocessor):
    """KNN: conf = -||z/||z|| - z_k||, minus the distance to the k-th nearest normalised ID training feature.

    Args:
        k: neighbour rank (OpenOOD v1.5 default 50). A k larger than the number of ID training samples is
            clamped to it in ``fit`` with a warning; ``k`` then holds the value used and ``k_requested``
            the one asked for (both land in metrics.json).
        backend: ``auto`` (faiss when installed and it can search where the data is, else torch),
            ``faiss`` or ``torch`` (:mod:`.knn_search`).
        memory_mb: torch backend: budget of one block's temporaries (queries are searched in blocks).
    """

    def __init__(self, k: PositiveInt = 50, backend: Literal["auto", "faiss", "torch"] = "auto",
                 memory_mb: PositiveFloat = 1024.0):
        if k < 1:
            raise ValueError(f"knn: k must be >= 1, got {k}")
        self.k, self.backend, self.memory_mb = int(k), backend, float(memory_mb)
        self._index: KNNIndex | None = None

    def fit(self, train_outputs: NetOutputs | None = None, **_):
        if train_outputs is None:
            raise ValueError("knn needs ID training outputs to fit")
        n = len(train_outputs.features)
        if self.k > n:  # the k-th neighbour does not exist: use the farthest one, and record that k
            get_logger().warning("knn: k=%d exceeds the %d ID training samples; using k=%d (recorded in "
                                 "metrics.json)", self.k, n, n)
            self.k_requested, self.k = self.k, n
        self._index = KNNIndex(l2_normalize(train_outputs.features), backend=self.backend,
                               memory_mb=self.memory_mb)
        return self

    def score(self, outputs: NetOutputs) -> np.ndarray:
        if self._index is None:
            raise RuntimeError("knn: call fit() before score()")
        dist = self._index.search(l2_normalize(outputs.features), self.k)
        return as_numpy(-dist[:, -1])
