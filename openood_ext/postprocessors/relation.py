"""Neural relation graph score (Kim et al., "Neural Relation Graph: A Unified Framework for Identifying
Label Noise and Outlier Data", NeurIPS 2023)."""

from __future__ import annotations

import numpy as np
import torch

from ..features import NetOutputs
from .base import Postprocessor, as_numpy
from .common import check_fitted, softmax64, unit_rows
from .knn_search import DEFAULT_MEMORY_MB, rows_per_chunk
from .registry import POSTPROCESSORS


def relation_score(feat: torch.Tensor, prob: torch.Tensor, bank_feat: torch.Tensor, bank_prob: torch.Tensor,
                   power: float = 1.0, threshold: float = 0.03, chunk_size: int = 1024,
                   memory_mb: float = DEFAULT_MEMORY_MB) -> torch.Tensor:
    """``sum_j r_ij^power`` over edges with ``r_ij > threshold``, where
    ``r_ij = max(<f_i, f_j>, 0) * <p_i, p_j>`` (features L2-normalised, p softmax). float64 [N].

    Both factors are non-negative (p are probabilities), so r >= 0 and the paper's sign(r)|r|^pow is
    r^pow. The [chunk, M] similarity blocks are computed in float32 (inputs are unit vectors and
    probabilities, so the relative error is ~1e-7) and summed in float64; this is the hot loop of the
    method, O(N * M * D). Queries go in blocks whose [block, M] temporaries (two float32, a mask) stay
    within ``memory_mb``.
    """
    out = []
    step = rows_per_chunk(len(bank_feat), memory_mb, chunk_size, bytes_per_pair=9)
    bank_feat, bank_prob = bank_feat.float().T.contiguous(), bank_prob.float().T.contiguous()
    for f, p in zip(feat.float().split(step), prob.float().split(step)):
        rel = (f @ bank_feat).clamp_min_(0.0).mul_(p @ bank_prob)
        kept = rel > threshold
        if power != 1.0:
            rel.pow_(power)
        out.append((rel * kept).sum(dim=1, dtype=torch.float64))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


@POSTPROCESSORS.register("relation")
class RelationPostprocessor(Postprocessor):
    """Relation: conf = sum_j [r_j > 0.03] r_j^pow, r_j = max(<z, z_j>, 0) <p, p_j> over ID train j; higher = more ID.

    Features are L2-normalised, p = softmax(logits).

    Args:
        pow: kernel exponent (OpenOOD default 1).
        threshold: edges with |r| at or below it are dropped (0.03 in the paper's code).
    """

    def __init__(self, pow: float = 1, threshold: float = 0.03):  # noqa: A002 (OpenOOD's argument name)
        if pow <= 0:
            raise ValueError(f"relation: pow must be > 0, got {pow}")
        self.pow, self.threshold = float(pow), float(threshold)
        self._bank: tuple[torch.Tensor, torch.Tensor] | None = None

    def fit(self, train_outputs: NetOutputs | None = None, **_):
        if train_outputs is None:
            raise ValueError("relation needs ID training outputs to fit")
        self._bank = (unit_rows(train_outputs.features), softmax64(train_outputs.logits))
        return self

    def score(self, outputs: NetOutputs) -> np.ndarray:
        check_fitted(self._bank, "relation")
        return as_numpy(relation_score(unit_rows(outputs.features), softmax64(outputs.logits),
                                       *self._bank, power=self.pow, threshold=self.threshold))
