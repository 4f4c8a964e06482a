"""Outlier synthesizers (NPOS, Stable-Diffusion latents, ...) register here."""

from ..registry import Registry

SYNTHESIZERS = Registry("synthesizers")

__all__ = ["SYNTHESIZERS"]
