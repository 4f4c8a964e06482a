"""Autoencoder baseline of FCDD (``training/ae.py``): unsupervised, mean squared reconstruction error.

Score: mean squared error per sample; heatmap: per-pixel squared error averaged over channels (raw for
the pixel AUROC, blurred in the displayed grids like the HSC heatmaps; ``blur_pixel_maps: true`` scores the
blurred map). Networks ``ae_cnn28`` / ``ae_cnn32`` (FCDD's ``AE28`` / ``AE32_LW3K``).
"""

from __future__ import annotations

import torch

from .hsc import BlurredDisplay
from .registry import TRAINERS
from .trainer import Trainer


@TRAINERS.register("ae")
class AETrainer(BlurredDisplay, Trainer):
    """Reconstruction of normal samples only (no outliers)."""

    def __init__(self, blur_pixel_maps: bool = False):
        self.blur_pixel_maps = bool(blur_pixel_maps)

    def training_step(self, batch):
        loss = ((self.net(batch.images) - batch.images) ** 2).mean()
        return {"loss": loss}

    @torch.no_grad()
    def anomaly_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.net.eval()
        err = (self.net(images) - images) ** 2
        return err.flatten(1).mean(1), self._pixel_maps(err.mean(1))
