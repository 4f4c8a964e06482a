"""CFOOD: a reverse nearest-neighbour score, OpenOOD's ``cfood`` postprocessor (its docstring is the
definition; no paper is cited there).

A test feature is compared with a reference set of normalised ID training features: for a neighbour
fraction kappa, it "fits in" reference point i when it is closer to i than i's (kappa n)-th nearest
reference neighbour. kappa(x) is the smallest fraction on a fixed grid at which x fits in at least a
fraction ``k`` of the reference points; conf = -kappa(x) (1 when no grid value suffices).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch

from ..features import NetOutputs
from ..schema import NonNegativeInt, Range
from .base import Postprocessor, as_numpy
from .common import check_fitted, unit_rows
from .registry import POSTPROCESSORS

#: the neighbour fractions kappa tried, in increasing order (OpenOOD's grid)
KAPPA_GRID = np.concatenate((np.linspace(0.001, 0.1, 100), np.linspace(0.105, 0.5, 81), np.linspace(0.51, 0.99, 49)))


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``||a_i - b_j||^2`` in float64, [len(a), len(b)], clamped at 0."""
    a, b = a.double(), b.double()
    return ((a * a).sum(1)[:, None] - 2.0 * a @ b.T + (b * b).sum(1)[None, :]).clamp_min(0.0)


def min_count(n: int, k: float) -> int:
    """The smallest count c with ``c / n >= k``, compared in float32 as OpenOOD does (n + 1 if none)."""
    ratios = np.arange(n + 1, dtype=np.float32) / np.float32(n)
    hit = np.flatnonzero(ratios >= np.float32(k))
    return int(hit[0]) if len(hit) else n + 1


@POSTPROCESSORS.register("cfood")
class CFOODPostprocessor(Postprocessor):
    """CFOOD: conf = -min{kappa : x is within the (kappa n)-NN radius of >= k n reference ID features}; higher = more ID.

    Args:
        alpha: share of the ID training features drawn (seeded) as the reference set, in (0, 1]
            (OpenOOD default 0.1; 1 keeps them all).
        k: the share of reference points x must fit in, in (0, 1] (OpenOOD default 0.01).
        seed: seed of the reference draw. OpenOOD draws it with an unseeded ``torch.randperm``; with the
            global torch seed set to ``seed`` it draws the same set as this.
        chunk: test samples per distance block (bounds memory; not a hyperparameter).
    Features are L2-normalised; distances are squared Euclidean in float64 (OpenOOD: float32).
    """

    def __init__(self, alpha: Annotated[float, Range(0, 1, open_low=True)] = 0.1,
                 k: Annotated[float, Range(0, 1, open_low=True)] = 0.01, seed: NonNegativeInt = 0,
                 chunk: Annotated[int, Range(1)] = 256):
        self.alpha, self.k, self.seed, self._chunk = float(alpha), float(k), int(seed), int(chunk)
        self._ref = self._radii = self._kappa = None

    def fit(self, train_outputs: NetOutputs | None = None, **_):
        if train_outputs is None:
            raise ValueError("cfood needs ID training outputs to fit")
        feats = unit_rows(train_outputs.features)
        n_all = len(feats)
        n = int(self.alpha * n_all) if self.alpha < 1 else n_all
        if n < 2:
            raise ValueError(f"cfood: alpha={self.alpha} of {n_all} ID training samples leaves {n} reference "
                             f"point(s); need at least 2")
        if self.alpha < 1:
            perm = torch.randperm(n_all, generator=torch.Generator().manual_seed(self.seed))[:n]
            feats = feats[perm]
        pos = (KAPPA_GRID * n - 1).astype(int)
        keep = np.concatenate(([True], pos[:-1] < pos[1:]))  # distinct, increasing neighbour ranks
        pos, self._kappa = pos[keep], torch.from_numpy(KAPPA_GRID[keep])
        ranks = torch.from_numpy(pos + 1)  # + 1: the point itself is its own nearest neighbour
        radii = []
        for block in feats.split(self._chunk):
            radii.append(squared_distances(block, feats).sort(dim=1).values[:, ranks])
        self._ref, self._radii = feats, torch.cat(radii)  # [n, D], [n, len(grid)] non-decreasing rows
        return self

    def kappa(self, features: torch.Tensor) -> torch.Tensor:
        """kappa per sample (1.0 when no grid value suffices), float64 [N]."""
        check_fitted(self._ref, "cfood")
        n, grid = len(self._ref), len(self._kappa)
        need = min_count(n, self.k)
        out = []
        for block in unit_rows(features).split(self._chunk):
            d2 = squared_distances(block, self._ref)  # [B, n]
            # first grid index at which each reference point's radius reaches the distance
            first = torch.searchsorted(self._radii.contiguous(), d2.T.contiguous(), right=False).T  # [B, n]
            if need > n:
                out.append(torch.ones(len(block), dtype=torch.float64))
                continue
            idx = first.sort(dim=1).values[:, need - 1]  # grid index where the count first reaches `need`
            kappas = torch.cat([self._kappa, torch.ones(1, dtype=torch.float64)])
            out.append(kappas[idx.clamp(max=grid)])
        return torch.cat(out)

    def score(self, outputs: NetOutputs) -> np.ndarray:
        return as_numpy(-self.kappa(outputs.features))
