"""OpenMax (Bendale & Boult, "Towards Open Set Deep Networks", CVPR 2016), as configured in OpenOOD v1.5:
one channel (the logits), Euclidean distances to the class mean logit vectors, Weibull tail 20, the
top-3 classes revised.

The per-class Weibull models are fitted with libMR's ``MR.fit_high`` when ``libmr`` is importable, and
otherwise with an equivalent scipy fit (:class:`TailWeibull`): libMR shifts the tail so that its
smallest value maps to ``translate_amount = 1`` and fits a two-parameter Weibull by maximum likelihood;
``w_score(x)`` is that Weibull's CDF at the shifted ``x`` (0 below the shift).
"""

from __future__ import annotations

from typing import Literal

import importlib.util
import math

import numpy as np
from scipy.optimize import brentq
from scipy.special import logsumexp

from ..schema import PositiveInt
from ..features import NetOutputs
from ..utils.runtime import get_logger
from .base import Postprocessor
from .common import check_fitted
from .registry import POSTPROCESSORS


def libmr_available() -> bool:
    return importlib.util.find_spec("libmr") is not None


def weibull_mle(y: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood ``(scale, shape)`` of a two-parameter Weibull for positive data ``y``.

    The shape k solves ``sum(y^k ln y) / sum(y^k) - 1/k - mean(ln y) = 0`` (increasing in k), then
    ``scale = mean(y^k)^(1/k)``. Raises ValueError when all values are equal (no finite MLE).
    """
    ly = np.log(np.asarray(y, dtype=np.float64))
    if len(ly) < 2 or np.ptp(ly) <= 0:
        raise ValueError("weibull fit needs at least two distinct values")

    def g(k: float) -> float:
        w = np.exp(k * ly - logsumexp(k * ly))
        return float((w * ly).sum() - 1.0 / k - ly.mean())

    lo, hi = 1.0, 1.0
    while g(lo) > 0:
        lo /= 2.0
    while g(hi) < 0:
        hi *= 2.0
    k = brentq(g, lo, hi, xtol=1e-14, rtol=1e-15, maxiter=500)
    scale = math.exp((logsumexp(k * ly) - math.log(len(ly))) / k)
    return scale, k


class TailWeibull:
    """libMR's ``fit_high`` + ``w_score`` in numpy/scipy (see the module docstring)."""

    def __init__(self, tail: np.ndarray, translate_amount: float = 1.0):
        tail = np.sort(np.asarray(tail, dtype=np.float64))
        self.translate, self.small_score = float(translate_amount), float(tail[0])
        self.valid = True
        try:
            self.scale, self.shape = weibull_mle(tail + self.translate - self.small_score)
        except ValueError:
            self.valid = False

    def w_score(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if not self.valid:
            return np.zeros_like(x)
        t = x + self.translate - self.small_score
        return np.where(t < 0, 0.0, -np.expm1(-np.power(np.clip(t, 0, None) / self.scale, self.shape)))


class _LibMRWeibull:
    def __init__(self, tail: np.ndarray):
        import libmr
        self._mr = libmr.MR()
        tail = np.ascontiguousarray(np.sort(np.asarray(tail, dtype=np.float64)))
        self._mr.fit_high(tail, len(tail))
        self.valid = bool(self._mr.is_valid)

    def w_score(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float64))
        if not self.valid:
            return np.zeros_like(x)
        return np.asarray(self._mr.w_score_vector(x))


def openmax_unknown_prob(logits: np.ndarray, wscores: np.ndarray, alpha: int) -> np.ndarray:
    """OpenMax probability of the unknown class per sample, [N].

    ``wscores[i, c]`` is class c's Weibull CDF at the distance of sample i to class c's mean. The
    ``alpha`` largest logits are revised with weights ``(alpha + 1 - r) / alpha`` (rank r = 1..alpha):
    ``v_c = s_c (1 - w_c omega_c)``, ``v_0 = sum_c s_c w_c omega_c``, and
    ``P(unknown) = exp(v_0) / (exp(v_0) + sum_c exp(v_c))``.
    """
    n, c = logits.shape
    alpha = min(alpha, c)
    ranked = np.argsort(logits, axis=1, kind="stable")[:, ::-1][:, :alpha]
    omega = np.zeros((n, c))
    np.put_along_axis(omega, ranked, (alpha + 1 - np.arange(1, alpha + 1)) / alpha, axis=1)
    revised = logits * (1.0 - wscores * omega)
    unknown = (logits - revised).sum(axis=1)
    everything = np.concatenate([revised, unknown[:, None]], axis=1)
    return np.exp(unknown - logsumexp(everything, axis=1))


@POSTPROCESSORS.register("openmax")
class OpenMaxPostprocessor(Postprocessor):
    """OpenMax: conf = -P(unknown), the OpenMax unknown-class probability of Weibull-revised logits; higher = more ID.

    Fit: per class c, the mean logit vector m_c of correctly classified ID training samples and a
    Weibull model of the ``tailsize`` largest Euclidean distances ||s - m_c||.

    Args:
        tailsize: tail length of the Weibull fit (OpenOOD 20).
        alpha: number of top classes revised (OpenOOD 3).
        backend: ``auto`` (libmr when importable, else scipy), ``libmr`` or ``scipy``.
    A class whose tail cannot be fitted (fewer than two distinct distances) never rejects (w = 0).
    """

    def __init__(self, tailsize: PositiveInt = 20, alpha: PositiveInt = 3, backend: Literal["auto", "libmr", "scipy"] = "auto"):
        if int(tailsize) < 2:
            raise ValueError(f"openmax: tailsize must be >= 2, got {tailsize}")
        if int(alpha) < 1:
            raise ValueError(f"openmax: alpha must be >= 1, got {alpha}")
        if backend not in ("auto", "libmr", "scipy"):
            raise ValueError(f"openmax: backend must be auto, libmr or scipy, got {backend!r}")
        if backend == "libmr" and not libmr_available():
            raise ValueError("openmax: backend 'libmr' asked for but libmr is not installed "
                             "(pip install numpy Cython && pip install --no-build-isolation libmr)")
        self.tailsize, self.alpha = int(tailsize), int(alpha)
        self.backend = ("libmr" if libmr_available() else "scipy") if backend == "auto" else backend
        self._means: np.ndarray | None = None
        self._models: list = []

    def fit(self, train_outputs: NetOutputs | None = None, **_):
        if train_outputs is None or train_outputs.labels is None:
            raise ValueError("openmax needs labelled ID training outputs to fit")
        logits = train_outputs.logits.double().numpy()
        labels, preds = train_outputs.labels.numpy(), train_outputs.preds.numpy()
        num_classes = logits.shape[1]
        means, models = np.zeros((num_classes, num_classes)), []
        for c in range(num_classes):
            correct = logits[(labels == c) & (preds == c)]
            if len(correct) == 0:
                get_logger().warning("openmax: class %d has no correctly classified training sample; "
                                     "it never rejects", c)
                models.append(None)
                continue
            means[c] = correct.mean(axis=0)
            dists = np.linalg.norm(correct - means[c], axis=1)
            tail = np.sort(dists)[-self.tailsize:]
            model = _LibMRWeibull(tail) if self.backend == "libmr" else TailWeibull(tail)
            if not model.valid:
                get_logger().warning("openmax: Weibull fit failed for class %d; it never rejects", c)
            models.append(model)
        self._means, self._models = means, models
        return self

    def wscores(self, logits: np.ndarray) -> np.ndarray:
        """Weibull CDF of each sample's distance to each class mean, [N, C]."""
        check_fitted(self._means, "openmax")
        w = np.zeros(logits.shape)
        for c, model in enumerate(self._models):
            if model is not None:
                w[:, c] = model.w_score(np.linalg.norm(logits - self._means[c], axis=1))
        return w

    def score(self, outputs: NetOutputs) -> np.ndarray:
        logits = outputs.logits.double().numpy()
        return -openmax_unknown_prob(logits, self.wscores(logits), self.alpha)
