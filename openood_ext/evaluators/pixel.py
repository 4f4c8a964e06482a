"""The ``pixel`` evaluator: pixel-level AUROC of anomaly heatmaps against ground-truth masks (FCDD)."""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .metrics import auroc
from .registry import EVALUATORS


@EVALUATORS.register("pixel")
class PixelEvaluator:
    """Pixel AUROC: every pixel is a sample, heat (higher = anomalous) ranks it against its mask value.

    Args:
        max_pixels: exact AUROC over all pixels when there are at most this many (the sort needs about
            16 bytes per pixel); above it, a uniform random subset of this size (seeded) is used and the
            result says so (``subsampled: true``).
        seed: seed of that subset.
    """

    def __init__(self, max_pixels: int = 50_000_000, seed: int = 0):
        self.max_pixels, self.seed = int(max_pixels), int(seed)

    def evaluate(self, heatmaps: np.ndarray, masks: np.ndarray, method: str = "heatmap",
                 split: str = "test") -> dict:
        """heatmaps [N, H, W] float, masks [N, H, W] {0, 1} -> ``{"pixel_auroc", "n_pixels", "subsampled"}``."""
        heat, mask = np.asarray(heatmaps), np.asarray(masks)
        if heat.shape != mask.shape or heat.ndim != 3:
            raise DataError(f"pixel: heatmaps {heat.shape} and masks {mask.shape} must both be [N, H, W]")
        heat, mask = heat.reshape(-1), mask.reshape(-1).astype(bool)
        subsampled = heat.size > self.max_pixels
        if subsampled:
            idx = np.random.default_rng(self.seed).choice(heat.size, self.max_pixels, replace=False)
            heat, mask = heat[idx], mask[idx]
        try:
            value = auroc(heat, mask)
        except ValueError as exc:
            raise DataError(f"heatmaps of '{method}' on '{split}': {exc}") from None
        return {"pixel_auroc": value, "n_pixels": int(heat.size), "subsampled": bool(subsampled)}
