"""NNGuide: nearest-neighbour guidance (Park, Jung & Teoh, "Nearest Neighbor Guidance for
Out-of-Distribution Detection", ICCV 2023)."""

from __future__ import annotations

import numpy as np
import torch

from ..schema import NonNegativeInt, PositiveInt, UnitFloat
from ..features import NetOutputs
from .base import Postprocessor, as_numpy
from .common import check_fitted, energy, unit_rows
from .registry import POSTPROCESSORS


def mean_topk_inner_product(queries: torch.Tensor, bank: torch.Tensor, k: int,
                            chunk_size: int = 4096) -> torch.Tensor:
    """Mean of the k largest inner products of each query with the bank rows, float64 [N]."""
    k = min(int(k), len(bank))
    out = [(block @ bank.T).topk(k, dim=1).values.mean(dim=1)
           for block in queries.double().split(chunk_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


@POSTPROCESSORS.register("nnguide")
class NNGuidePostprocessor(Postprocessor):
    """NNGuide: conf = E(x) mean_topK <z/|z|, E(x_i) z_i/|z_i|> over an ID bank, E = logsumexp; higher = more ID.

    Args:
        K: neighbours (OpenOOD default 100; at most the bank size).
        alpha: fraction of the ID training set kept as the bank (OpenOOD default 0.01). The bank is a
            seeded random subset of ``max(round(alpha * N), K)`` samples (capped at N), so that K
            neighbours exist (OpenOOD takes whole loader batches, so its bank is never below a batch).
        seed: seed of the bank subset.
    """

    def __init__(self, K: PositiveInt = 100, alpha: UnitFloat = 0.01, seed: NonNegativeInt = 0):
        if int(K) < 1:
            raise ValueError(f"nnguide: K must be >= 1, got {K}")
        if not 0 < alpha <= 1:
            raise ValueError(f"nnguide: alpha must be in (0, 1], got {alpha}")
        self.K, self.alpha, self.seed = int(K), float(alpha), int(seed)
        self.bank_size: int | None = None
        self._guides: torch.Tensor | None = None

    def fit(self, train_outputs: NetOutputs | None = None, **_):
        if train_outputs is None:
            raise ValueError("nnguide needs ID training outputs to fit")
        n = len(train_outputs)
        size = min(n, max(int(round(self.alpha * n)), self.K))
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))[:size]
        feats = unit_rows(train_outputs.features[idx])
        self._guides = feats * energy(train_outputs.logits[idx])[:, None]
        self.bank_size = size
        return self

    def score(self, outputs: NetOutputs) -> np.ndarray:
        check_fitted(self._guides, "nnguide")
        guidance = mean_topk_inner_product(unit_rows(outputs.features), self._guides, self.K)
        return as_numpy(energy(outputs.logits) * guidance)
