"""OOD detection metrics with OOD as the positive class (OpenOOD v1.5 conventions).

Inputs are confidences, higher = more in-distribution. Definitions:

* ``auroc``: area under the ROC curve for detecting OOD with score ``-conf`` (ties count one half).
* ``aupr_in`` / ``aupr_out``: trapezoidal area under the precision-recall curve with ID (score ``conf``)
  / OOD (score ``-conf``) as the positive class, including the (recall 0, precision 1) end point, as
  ``sklearn.metrics.auc(recall, precision)`` computes it in OpenOOD v1.5 (not average precision).
* ``fpr95``: fraction of OOD samples accepted as ID at the threshold that keeps at least 95% of ID
  samples (the ODIN/Hendrycks definition), i.e. OOD-acceptance at the first ROC point where ID recall >= 0.95.
* ``fpr95_openood``: what OpenOOD v1.5's code reports as FPR@95: the fraction of ID samples rejected at the
  first point of scikit-learn's (intermediate-dropping) ROC curve where 95% of OOD is caught (its issue #308).
  Use it when comparing with OpenOOD's published tables.

All values are fractions in [0, 1].
"""

from __future__ import annotations

import numpy as np

TPR_LEVEL = 0.95


def check_scores(conf: np.ndarray, what: str = "scores") -> np.ndarray:
    """Return ``conf`` as a 1-D float64 array; raise ValueError on NaN/Inf, wrong rank or emptiness."""
    arr = np.asarray(conf, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D array of confidences, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{what}: no samples")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"{what}: {int(bad.sum())} of {arr.size} scores are NaN or infinite")
    return arr


def _cumulative_counts(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True/false positive counts at each distinct threshold, from the highest score down."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], positive[order]
    last_of_run = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[last_of_run].astype(np.float64)
    fps = (last_of_run + 1) - tps
    return tps, fps


def _roc(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tps, fps = _cumulative_counts(scores, positive)
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]


def _aupr(scores: np.ndarray, positive: np.ndarray) -> float:
    tps, fps = _cumulative_counts(scores, positive)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.trapezoid(np.r_[1.0, precision], np.r_[0.0, recall]))


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve for ``positive`` (bool/0-1 [N]) ranked by ``scores`` (higher = positive).

    Ties count one half. Raises ValueError when only one class is present or scores are not finite.
    """
    scores = check_scores(scores, "scores")
    positive = np.asarray(positive).astype(bool)
    if positive.shape != scores.shape:
        raise ValueError(f"auroc: {scores.shape} scores but {positive.shape} labels")
    if positive.all() or not positive.any():
        raise ValueError("auroc: needs both classes, but only one is present in the labels")
    fpr, tpr = _roc(scores, positive.astype(np.float64))
    return float(np.trapezoid(tpr, fpr))


def ood_metrics(id_conf: np.ndarray, ood_conf: np.ndarray) -> dict[str, float]:
    """AUROC, AUPR-In, AUPR-Out, FPR@95 (and OpenOOD's FPR@95 variant) for one ID/OOD pair.

    Args:
        id_conf: confidences of ID test samples, [N_id].
        ood_conf: confidences of OOD samples, [N_ood].
    Returns:
        dict with keys ``auroc``, ``aupr_in``, ``aupr_out``, ``fpr95``, ``fpr95_openood`` (fractions).
    """
    id_conf = check_scores(id_conf, "ID confidences")
    ood_conf = check_scores(ood_conf, "OOD confidences")
    conf = np.concatenate([id_conf, ood_conf])
    is_ood = np.r_[np.zeros(len(id_conf)), np.ones(len(ood_conf))]

    fpr, tpr = _roc(-conf, is_ood)
    ood_accept, id_recall = _roc(conf, 1.0 - is_ood)
    return {
        "auroc": float(np.trapezoid(tpr, fpr)),
        "aupr_in": _aupr(conf, 1.0 - is_ood),
        "aupr_out": _aupr(-conf, is_ood),
        "fpr95": float(ood_accept[np.argmax(id_recall >= TPR_LEVEL)]),
        "fpr95_openood": _fpr95_openood(conf, is_ood),
    }


def _fpr95_openood(conf: np.ndarray, is_ood: np.ndarray) -> float:
    from sklearn.metrics import roc_curve  # the exact curve OpenOOD v1.5 thresholds on
    fpr, tpr, _ = roc_curve(is_ood, -conf)
    return float(fpr[np.argmax(tpr >= TPR_LEVEL)])


def accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of ``preds == labels`` ([N] integer arrays)."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    if preds.shape != labels.shape or preds.size == 0:
        raise ValueError(f"accuracy: need two equal non-empty [N] arrays, got {preds.shape} and {labels.shape}")
    return float((preds == labels).mean())
