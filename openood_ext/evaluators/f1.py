"""Macro-F1 of open-set classification at the threshold that keeps a given fraction of ID samples
(VMDLS / CROSR's F1 at 95 % TPR).

Every sample gets a label in {0..K-1, K}: "unknown" (K) when its confidence is below the threshold t,
else its predicted class. The truth is the ID class for ID samples and K for OOD samples. The score is the
macro-F1 over the K + 1 labels. t is the largest value with at least ``tpr`` of the ID confidences >= t,
i.e. ``sort(conf_id)[floor((1 - tpr) * n_id)]`` (the published
code's ``--thresholding`` flag, which its README mentions, does not exist; this is its stated intent).
Confidences follow the toolkit's convention: higher = more in-distribution.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import f1_score


def threshold_at_tpr(conf_id: np.ndarray, tpr: float = 0.95) -> float:
    """t with mean(conf_id >= t) >= tpr, as large as possible (ties can keep more than ``tpr``)."""
    conf_id = np.sort(np.asarray(conf_id, dtype=np.float64))
    if conf_id.size == 0:
        raise ValueError("threshold_at_tpr: no ID confidences")
    if not 0 < tpr <= 1:
        raise ValueError(f"threshold_at_tpr: tpr must be in (0, 1], got {tpr}")
    k = int(math.floor((1.0 - tpr) * conf_id.size + 1e-9))
    return float(conf_id[min(k, conf_id.size - 1)])


def open_set_f1(conf_id, pred_id, labels_id, conf_ood, pred_ood=None, num_classes: int | None = None,
                tpr: float = 0.95) -> dict[str, float]:
    """Macro-F1 over K known classes + "unknown" at the ``tpr`` threshold.

    Args:
        conf_id, pred_id, labels_id: ID confidence, predicted class and true class [N_id].
        conf_ood: OOD confidence [N_ood]; pred_ood: their predicted classes (only matters for OOD
            samples above the threshold; default: class 0, which counts as a wrong known label the same way).
        num_classes: K (default: max label + 1).
    Returns ``{"f1": macro-F1, "threshold": t, "tpr": achieved ID acceptance}``.
    """
    conf_id, conf_ood = np.asarray(conf_id, np.float64), np.asarray(conf_ood, np.float64)
    pred_id, labels_id = np.asarray(pred_id, np.int64), np.asarray(labels_id, np.int64)
    pred_ood = np.zeros(len(conf_ood), np.int64) if pred_ood is None else np.asarray(pred_ood, np.int64)
    k = int(labels_id.max()) + 1 if num_classes is None else int(num_classes)
    t = threshold_at_tpr(conf_id, tpr)
    y_true = np.concatenate([labels_id, np.full(len(conf_ood), k)])
    y_pred = np.concatenate([np.where(conf_id >= t, pred_id, k), np.where(conf_ood >= t, pred_ood, k)])
    f1 = f1_score(y_true, y_pred, labels=list(range(k + 1)), average="macro", zero_division=0)
    return {"f1": float(f1), "threshold": t, "tpr": float(np.mean(conf_id >= t))}
