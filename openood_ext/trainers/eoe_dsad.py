"""EOE's Deep SAD objective (``src/eoe/training/dsad.py``; Ruff et al. 2020, centre at the origin):
per-sample loss ||f||^2 for normals, 1 / (||f||^2 + 1e-9) for outliers, mean over the 2B batch;
score 1 - exp(-(sqrt(||f||^2 + 1) - 1)) (as the published code), higher = more anomalous.
Network: ``eoe_cnn32``/``eoe_cnn28`` without head."""

from __future__ import annotations

import torch

from .eoe_hsc import EOEHSCTrainer
from .registry import TRAINERS


def dsad_loss(features: torch.Tensor, labels: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    sq = features.flatten(1).pow(2).sum(1)
    return torch.where(labels.bool(), 1 / (sq + eps), sq).mean()


@TRAINERS.register("eoe_dsad")
class EOEDSADTrainer(EOEHSCTrainer):
    """EOE Deep SAD (see the module doc): HSC's ``eps`` and score, its own loss."""

    def loss(self, outputs, labels):
        return dsad_loss(outputs, labels, self.eps)
