"""LogitNorm (Wei et al., ICML 2022, "Mitigating Neural Network Overconfidence with Logit Normalization")."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..schema import PositiveFloat
from .registry import TRAINERS
from .trainer import Trainer


def logit_norm(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Rows of [N, C] logits divided by (their L2 norm + 1e-7) x tau, as the paper's code does."""
    return logits / ((logits.norm(p=2, dim=1, keepdim=True) + 1e-7) * temperature)


@TRAINERS.register("logitnorm")
class LogitNormTrainer(Trainer):
    """Cross-entropy on L2-normalised logits scaled by 1 / ``temperature`` (tau = 0.04, the paper's
    CIFAR-10 value). The network is unchanged: test with raw logits (MSP/EBO/...)."""

    def __init__(self, temperature: PositiveFloat = 0.04):
        self.temperature = float(temperature)

    def training_step(self, batch):
        logits = self.net(batch.images)
        loss = F.cross_entropy(logit_norm(logits, self.temperature), batch.labels)
        return {"loss": loss, "acc": (logits.detach().argmax(1) == batch.labels).float().mean()}
