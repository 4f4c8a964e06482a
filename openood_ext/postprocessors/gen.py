"""Generalized entropy score (Liu et al., "GEN: Pushing the Limits of Softmax-Based Out-of-Distribution
Detection", CVPR 2023)."""

from __future__ import annotations

import numpy as np
import torch

from ..schema import PositiveFloat, PositiveInt
from ..features import NetOutputs
from .base import Postprocessor, as_numpy
from .registry import POSTPROCESSORS


def generalized_entropy(probs: torch.Tensor, gamma: float, m: int) -> torch.Tensor:
    """``sum over the M largest p_c of p_c^gamma (1 - p_c)^gamma`` per sample, float64 [N]."""
    top = probs.double().sort(dim=1).values[:, -m:]
    return (top.pow(gamma) * (1.0 - top).pow(gamma)).sum(dim=1)


@POSTPROCESSORS.register("gen")
class GENPostprocessor(Postprocessor):
    """GEN: conf = -sum_{top-M c} p_c^gamma (1 - p_c)^gamma, p = softmax(logits); higher = more ID.

    Args:
        gamma: exponent in (0, 1] (OpenOOD default 0.1).
        M: number of largest probabilities used (OpenOOD default 100; all classes when C < M).
    """

    def __init__(self, gamma: PositiveFloat = 0.1, M: PositiveInt = 100):
        if gamma <= 0:
            raise ValueError(f"gen: gamma must be > 0, got {gamma}")
        if int(M) < 1:
            raise ValueError(f"gen: M must be >= 1, got {M}")
        self.gamma, self.M = float(gamma), int(M)

    def score(self, outputs: NetOutputs) -> np.ndarray:
        probs = outputs.logits.double().softmax(dim=1)
        return as_numpy(-generalized_entropy(probs, self.gamma, self.M))
