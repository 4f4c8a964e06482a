"""Energy-bounded outlier exposure (Liu, Wang, Owens & Li, NeurIPS 2020, "Energy-based Out-of-distribution
Detection", the fine-tuning objective)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..schema import NonNegativeFloat
from ..utils.runtime import full_precision, upcast
from .oe import forward_joint
from .registry import TRAINERS
from .trainer import Trainer


@full_precision
def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Free energy E(x) = -T logsumexp(f(x) / T), at least float32 [N]; lower = more in-distribution."""
    return -temperature * torch.logsumexp(upcast(logits) / temperature, dim=1)


def energy_hinge(e_in: torch.Tensor, e_out: torch.Tensor, m_in: float, m_out: float) -> torch.Tensor:
    """mean(relu(E_in - m_in)^2) + mean(relu(m_out - E_out)^2): push ID energies below m_in and outlier
    energies above m_out."""
    return F.relu(e_in - m_in).pow(2).mean() + F.relu(m_out - e_out).pow(2).mean()


@TRAINERS.register("energy_oe", aliases=["energy"])
class EnergyOETrainer(Trainer):
    """L = CE(ID) + ``lambda_energy`` x energy hinge, with the paper's m_in = -25, m_out = -7, weight 0.1.

    Score with EBO (the paper) or any zoo postprocessor. Outliers as for ``oe``.
    """

    needs_outliers = "images"
    default_outliers = {"name": "oe_images"}

    def __init__(self, lambda_energy: NonNegativeFloat = 0.1, m_in: float = -25.0, m_out: float = -7.0):
        if m_in >= m_out:
            raise ValueError(f"m_in ({m_in}) must be below m_out ({m_out}): ID energies are pushed lower")
        self.lambda_energy, self.m_in, self.m_out = float(lambda_energy), float(m_in), float(m_out)

    def training_step(self, batch):
        logits_id, logits_out = forward_joint(self.net, batch.images, batch.outliers)
        ce = F.cross_entropy(logits_id, batch.labels)
        hinge = energy_hinge(energy(logits_id), energy(logits_out), self.m_in, self.m_out)
        return {"loss": ce + self.lambda_energy * hinge, "ce": ce, "energy": hinge,
                "acc": (logits_id.detach().argmax(1) == batch.labels).float().mean()}
