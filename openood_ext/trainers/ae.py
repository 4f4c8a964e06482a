"""Autoencoder baseline of FCDD (``training/ae.py``): unsupervised, mean squared reconstruction error.

Score: mean squared error per sample; heatmap: per-pixel squared error averaged over channels,
Gaussian-blurred like the HSC heatmaps. Networks ``ae_cnn28`` / ``ae_cnn32``.
"""

from __future__ import annotations

import torch

from .hsc import blur_heatmaps, field_size
from .registry import TRAINERS
from .trainer import Trainer


@TRAINERS.register("ae")
class AETrainer(Trainer):
    """Reconstruction of normal samples only (no outliers)."""

    def training_step(self, batch):
        loss = ((self.net(batch.images) - batch.images) ** 2).mean()
        return {"loss": loss}

    @torch.no_grad()
    def anomaly_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.net.eval()
        err = (self.net(images) - images) ** 2
        return err.flatten(1).mean(1), blur_heatmaps(err.mean(1), field_size(self.net), getattr(self.net, "gauss_std", None))
