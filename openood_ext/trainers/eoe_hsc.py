"""EOE's HSC objective (``src/eoe/training/hsc.py``): d = sqrt(||f||^2 + 1) - 1 of the representation f;
per-sample loss d for normals, -log(1 - exp(-d) + 1e-9) for outliers, mean over the 2B batch;
score 1 - exp(-d) in [0, 1), higher = more anomalous. Network: ``eoe_cnn32``/``eoe_cnn28`` without head."""

from __future__ import annotations

from typing import Annotated

import torch

from ..schema import Range
from .eoe_base import EOEObjective
from .registry import TRAINERS


def hsc_distance(features: torch.Tensor) -> torch.Tensor:
    """Pseudo-Huber norm sqrt(||f||^2 + 1) - 1 of features [N, D] -> [N]."""
    return torch.sqrt(features.flatten(1).pow(2).sum(1) + 1) - 1


def hsc_loss(features: torch.Tensor, labels: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    d = hsc_distance(features)
    return torch.where(labels.bool(), -torch.log(1 - torch.exp(-d) + eps), d).mean()


def hsc_score(features: torch.Tensor) -> torch.Tensor:
    return 1 - torch.exp(-hsc_distance(features))


@TRAINERS.register("eoe_hsc")
class EOEHSCTrainer(EOEObjective):
    """EOE HSC (see the module doc)."""

    def __init__(self, eps: Annotated[float, Range(0, 1, open_high=True)] = 1e-9):
        self.eps = float(eps)

    def loss(self, outputs, labels):
        return hsc_loss(outputs, labels, self.eps)

    def score(self, outputs):
        return hsc_score(outputs)
