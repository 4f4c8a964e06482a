"""Outlier sources: image-space (outlier exposure, confetti, Fourier-filtered images) and feature-space
(NPOS, Stable-Diffusion latents, ...). See :mod:`openood_ext.synthesizers.base` for the contract."""

from .base import OutlierSource, SourceContext
from .registry import SYNTHESIZERS
from . import confetti, fourier_filter, npos, oe_images  # noqa: F401  (registration)
from . import sd_outliers as _sd_outliers  # noqa: F401  (registration: OAML)

__all__ = ["SYNTHESIZERS", "OutlierSource", "SourceContext"]
