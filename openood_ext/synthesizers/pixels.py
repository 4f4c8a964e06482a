"""Moving between the network's normalised inputs and pixel values in [0, 1] (per-channel mean/std)."""

from __future__ import annotations

from typing import Any, Mapping

import torch


class PixelSpace:
    """The benchmark's normalisation ``x_norm = (x01 - mean) / std`` and its inverse, for [B, C, H, W]."""

    def __init__(self, preprocessor: Mapping[str, Any]):
        channels = int(preprocessor.get("channels", 3))
        self.mean = torch.tensor(list(preprocessor.get("mean", [0.5] * channels)), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(list(preprocessor.get("std", [0.5] * channels)), dtype=torch.float32).view(1, -1, 1, 1)
        self.image_size = int(preprocessor.get("image_size", 32))
        self.channels = channels

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images -> pixel values (nominally in [0, 1])."""
        return x * self.std.to(x.device) + self.mean.to(x.device)

    def from_unit(self, x01: torch.Tensor) -> torch.Tensor:
        """Pixel values in [0, 1] -> normalised images."""
        return (x01 - self.mean.to(x01.device)) / self.std.to(x01.device)
