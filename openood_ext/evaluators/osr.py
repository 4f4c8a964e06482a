"""The ``osr`` evaluator: open-set recognition on class splits (known vs unknown classes).

A class split makes some classes *known* (the classifier is trained on them) and the rest *unknown*
(seen only at test time). Reported, as fractions:

* ``auroc``: AUROC of separating known (positive) from unknown test samples by confidence (higher = known),
  scikit-learn's ``roc_auc_score(known, conf)``; ties count one half;
* ``closed_set_accuracy``: accuracy of the predicted class on the known test samples only.
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .metrics import accuracy, auroc
from .registry import EVALUATORS


@EVALUATORS.register("osr")
class OpenSetEvaluator:
    """OSR: AUROC of known (positive) vs unknown classes by confidence, and closed-set accuracy on knowns."""

    family = "arrays"  # the contract of the evaluators package docstring

    def evaluate(self, conf: np.ndarray, preds: np.ndarray, labels: np.ndarray, known: np.ndarray,
                 method: str = "osr", split: str = "test") -> dict:
        """
        Args:
            conf: confidence [N], higher = more likely a known class.
            preds: predicted known class [N]; labels: true class [N] (any value for unknowns).
            known: bool [N], True for samples of the known classes.
            method, split: the postprocessor and the dataset, named in errors.
        Returns:
            ``{"auroc", "closed_set_accuracy", "n_known", "n_unknown"}`` (fractions).
        Raises DataError for NaN/Inf confidences, arrays of different lengths, or a split with only known
        or only unknown samples.
        """
        where = f"scores of postprocessor '{method}' on '{split}'"
        known_arr = np.asarray(known)
        if known_arr.dtype != bool and known_arr.size and not np.isin(known_arr, (0, 1)).all():
            raise DataError(f"{where}: 'known' must be boolean (or 0/1)")
        known_arr = known_arr.astype(bool)
        arrays = {"conf": np.asarray(conf), "preds": np.asarray(preds), "labels": np.asarray(labels),
                  "known": known_arr}
        shapes = {k: v.shape for k, v in arrays.items()}
        if len(set(shapes.values())) != 1 or len(shapes["conf"]) != 1:
            raise DataError(f"{where}: conf, preds, labels and known must be [N] arrays of one length, got "
                            + ", ".join(f"{k} {s}" for k, s in shapes.items()))
        try:
            value = auroc(arrays["conf"], known_arr)
        except ValueError as exc:
            raise DataError(f"{where}: {exc}") from None
        return {"auroc": value,
                "closed_set_accuracy": accuracy(arrays["preds"][known_arr], arrays["labels"][known_arr]),
                "n_known": int(known_arr.sum()), "n_unknown": int((~known_arr).sum())}
