"""Outlier sources: image-space (outlier exposure, confetti, Fourier-filtered images) and feature-space
(NPOS, Stable-Diffusion latents, ...), configured under ``trainer.outliers`` and registered in
:data:`OUTLIER_SOURCES`. See :mod:`openood_ext.synthesizers.base` for the contract. (The folder keeps its
historical name so that existing imports of its modules keep working.)"""

from .base import OutlierSource, SourceContext
from .registry import OUTLIER_SOURCES, SYNTHESIZERS
from . import confetti, fcdd_noise, fourier_filter, npos, oe_images, sd_outliers  # noqa: F401  (registration)

__all__ = ["OUTLIER_SOURCES", "SYNTHESIZERS", "OutlierSource", "SourceContext"]
