"""The ``osr`` evaluator: open-set recognition on class splits (known vs unknown classes)."""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .metrics import accuracy, auroc
from .registry import EVALUATORS


@EVALUATORS.register("osr")
class OpenSetEvaluator:
    """OSR: AUROC of known (positive) vs unknown classes by confidence, and closed-set accuracy on knowns."""

    def evaluate(self, conf: np.ndarray, preds: np.ndarray, labels: np.ndarray, known: np.ndarray,
                 method: str = "osr", split: str = "test") -> dict:
        """
        Args:
            conf: confidence [N], higher = more likely a known class.
            preds: predicted known class [N]; labels: true class [N] (any value for unknowns).
            known: bool [N], True for samples of the known classes.
        Returns:
            ``{"auroc", "closed_set_accuracy", "n_known", "n_unknown"}`` (fractions).
        """
        known = np.asarray(known, dtype=bool)
        try:
            value = auroc(conf, known)
        except ValueError as exc:
            raise DataError(f"scores of postprocessor '{method}' on '{split}': {exc}") from None
        return {"auroc": value, "closed_set_accuracy": accuracy(np.asarray(preds)[known], np.asarray(labels)[known]),
                "n_known": int(known.sum()), "n_unknown": int((~known).sum())}
