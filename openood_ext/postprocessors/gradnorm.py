"""GradNorm (Huang, Geng & Li, "On the Importance of Gradients for Detecting Distributional Shifts in the
Wild", NeurIPS 2021), in closed form from cached logits and features."""

from __future__ import annotations

import numpy as np
import torch

from ..features import NetOutputs
from .base import Postprocessor, as_numpy
from .registry import POSTPROCESSORS


def gradnorm_closed_form(logits: torch.Tensor, features: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``||d KL(u || softmax(logits / T)) / dW||_1`` for the last layer ``logits = W z + b``, float64 [N].

    With u uniform over C classes, KL(u || p) = -1/C sum_c log p_c - log C, whose gradient w.r.t. the
    logits is (p - u) / T; the gradient w.r.t. W is its outer product with z, and the L1 norm of an
    outer product factorises: ``(sum_c |p_c - 1/C|) * (sum_j |z_j|) / T``.
    """
    p = (logits.double() / temperature).softmax(dim=1)
    c = p.shape[1]
    return (p - 1.0 / c).abs().sum(dim=1) * features.double().abs().sum(dim=1) / temperature


@POSTPROCESSORS.register("gradnorm")
class GradNormPostprocessor(Postprocessor):
    """GradNorm: conf = (sum_c |softmax(logits)_c - 1/C|) * ||z||_1, the L1 norm of dKL(u||p)/dW; higher = more ID.

    Exactly the gradient norm the paper back-propagates, without running the network again.
    OpenOOD's code uses the target ``1`` per class instead of ``1/C`` (a loss C times larger), which
    scales every score by the constant C and leaves all metrics unchanged.
    """

    def score(self, outputs: NetOutputs) -> np.ndarray:
        return as_numpy(gradnorm_closed_form(outputs.logits, outputs.features))
