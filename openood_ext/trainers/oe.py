"""Outlier exposure (Hendrycks, Mazeika & Dietterich, ICLR 2019, "Deep Anomaly Detection with Outlier
Exposure")."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..schema import NonNegativeFloat
from ..utils.runtime import full_precision, upcast
from .registry import TRAINERS
from .trainer import Trainer


@full_precision
def uniform_cross_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy from softmax(logits) [N, C] to the uniform distribution, in float32:
    mean_n ( logsumexp(z_n) - mean_c z_nc ); its minimum, log C, is reached by constant logits."""
    logits = upcast(logits)
    return (torch.logsumexp(logits, dim=1) - logits.mean(dim=1)).mean()


def forward_joint(net, images: torch.Tensor, outliers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass over ID and outlier images together (batch-norm sees both, as in the papers'
    code); returns (ID logits, outlier logits)."""
    logits = net(torch.cat([images, outliers.to(images.dtype)]))
    return logits[:len(images)], logits[len(images):]


@TRAINERS.register("oe")
class OutlierExposureTrainer(Trainer):
    """L = CE(ID) + ``lambda_oe`` x CE(outliers -> uniform), ``lambda_oe`` = 0.5 (the paper's value).

    Outliers come from ``trainer.outliers`` (default: the benchmark's OE set, ``benchmark.oe``).
    Score at test time with MSP (the paper) or any zoo postprocessor.
    """

    needs_outliers = "images"
    default_outliers = {"name": "oe_images"}

    def __init__(self, lambda_oe: NonNegativeFloat = 0.5):
        self.lambda_oe = float(lambda_oe)

    def training_step(self, batch):
        logits_id, logits_out = forward_joint(self.net, batch.images, batch.outliers)
        ce = F.cross_entropy(logits_id, batch.labels)
        oe = uniform_cross_entropy(logits_out)
        return {"loss": ce + self.lambda_oe * oe, "ce": ce, "oe": oe,
                "acc": (logits_id.detach().argmax(1) == batch.labels).float().mean()}
