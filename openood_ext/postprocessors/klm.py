"""KL matching (Hendrycks et al., "Scaling Out-of-Distribution Detection for Real-World Settings",
ICML 2022)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import rel_entr

from ..features import NetOutputs
from .base import Postprocessor
from .common import check_fitted, fit_outputs
from .registry import POSTPROCESSORS


def kl_to_templates(probs: np.ndarray, templates: np.ndarray) -> np.ndarray:
    """``KL(p_i || q_k) = sum_c p_ic log(p_ic / q_kc)`` for every sample i and template k, [N, K].

    0 log 0 = 0; p > 0 where q = 0 gives +inf (as ``scipy.stats.entropy``).
    """
    k, c = templates.shape
    chunk = max(1, (1 << 24) // max(k * c, 1))  # bounds the [chunk, K, C] temporary
    return np.concatenate([rel_entr(probs[i:i + chunk, None, :], templates[None, :, :]).sum(axis=2)
                           for i in range(0, len(probs), chunk)]) if len(probs) else np.zeros((0, k))


@POSTPROCESSORS.register("klm", aliases=["kl_matching"])
class KLMatchingPostprocessor(Postprocessor):
    """KLM: conf = -min_k KL(softmax(logits) || q_k), q_k the mean ID-val softmax of predicted class k; higher = more ID.

    Templates are fitted on ID validation outputs (as OpenOOD), grouped by predicted
    class; a class never predicted gets the one-hot template e_k.
    """

    def __init__(self):
        self._templates: np.ndarray | None = None

    def fit(self, train_outputs: NetOutputs | None = None, val_outputs: NetOutputs | None = None, **_):
        out = fit_outputs(train_outputs, val_outputs, "val", "klm")
        probs = out.logits.double().softmax(dim=1)
        preds = probs.argmax(dim=1)
        num_classes = probs.shape[1]
        templates = torch.eye(num_classes, dtype=torch.float64)
        for k in range(num_classes):
            if (preds == k).any():
                templates[k] = probs[preds == k].mean(dim=0)
        self._templates = templates.numpy()
        return self

    def score(self, outputs: NetOutputs) -> np.ndarray:
        check_fitted(self._templates, "klm")
        probs = outputs.logits.double().softmax(dim=1).numpy()
        return -kl_to_templates(probs, self._templates).min(axis=1)
