"""EOE's BCE objective (``src/eoe/training/bce.py``): binary cross-entropy with logits on a one-logit
head, outliers labelled 1, mean over the 2B batch; score sigmoid(logit), higher = more anomalous.
Network: ``eoe_cnn32``/``eoe_cnn28`` with ``clf: true``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .eoe_base import EOEObjective
from .registry import TRAINERS


def bce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.flatten(), labels.float())


@TRAINERS.register("eoe_bce")
class EOEBCETrainer(EOEObjective):
    """EOE BCE (see the module doc)."""

    needs_logit = True

    def loss(self, outputs, labels):
        return bce_loss(outputs, labels)

    def score(self, outputs):
        return torch.sigmoid(outputs.flatten())
