"""EOE's focal objective (``src/eoe/training/focal.py``; Lin et al. 2017): per sample
b = BCE-with-logits (outliers labelled 1), p_t = exp(-b) clamped to [1e-7, 1 - 1e-7],
loss (1 - p_t)^gamma * b with gamma = 2, mean over the 2B batch; score sigmoid(logit), higher = more
anomalous. Network: ``eoe_cnn32``/``eoe_cnn28`` with ``clf: true``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..schema import NonNegativeFloat
from .eoe_base import EOEObjective
from .registry import TRAINERS


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    b = F.binary_cross_entropy_with_logits(logits.flatten(), labels.float(), reduction="none")
    p_t = torch.exp(-b).clamp(1e-7, 1 - 1e-7)
    return ((1 - p_t) ** gamma * b).mean()


@TRAINERS.register("eoe_focal")
class EOEFocalTrainer(EOEObjective):
    """EOE focal loss (see the module doc); ``gamma`` >= 0 (2)."""

    needs_logit = True

    def __init__(self, gamma: NonNegativeFloat = 2.0):
        self.gamma = float(gamma)

    def loss(self, outputs, labels):
        return focal_loss(outputs, labels, self.gamma)

    def score(self, outputs):
        return torch.sigmoid(outputs.flatten())
