"""The ``ad_ovr`` evaluator: one-vs-rest / leave-one-out anomaly detection, as FCDD and EOE report it.

In one-vs-rest, one class is normal and all others are anomalies; in leave-one-out, one class is the
anomaly and all others are normal. Either way a run produces, per (class, seed), anomaly scores
(higher = more anomalous) and binary labels (1 = anomaly). The evaluator reports AUROC per class
(mean ± std over seeds) and the mean over classes, with two spreads: the std over classes of the
per-class means, and the mean over classes of the per-seed std.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from .metrics import auroc
from .registry import EVALUATORS

MODES = ("one_vs_rest", "leave_one_out")


@dataclass
class ADRecord:
    """Scores of one (class, seed) experiment: anomaly scores [N] (higher = anomalous), labels [N] (1 = anomaly)."""

    cls: int | str
    seed: int
    scores: np.ndarray
    is_anomaly: np.ndarray


@EVALUATORS.register("ad_ovr")
class OneVsRestEvaluator:
    """AD AUROC per class (mean ± std over seeds) and over classes, one-vs-rest or leave-one-out."""

    def __init__(self, mode: str = "one_vs_rest"):
        if mode not in MODES:
            raise ValueError(f"ad_ovr: mode must be one of {MODES}, got {mode!r}")
        self.mode = mode

    def evaluate(self, records: list[ADRecord], method: str = "ad") -> dict:
        """``{"mode", "per_class": {cls: {"auroc_mean", "auroc_std", "aurocs", "seeds"}}, "auroc_mean",
        "auroc_std_over_classes", "auroc_std_over_seeds"}`` (fractions)."""
        if not records:
            raise DataError(f"ad_ovr: no results to evaluate for '{method}'")
        per_class: dict = {}
        for r in records:
            try:
                value = auroc(r.scores, r.is_anomaly)
            except ValueError as exc:
                raise DataError(f"anomaly scores of '{method}' for class {r.cls} (seed {r.seed}): {exc}") from None
            entry = per_class.setdefault(r.cls, {"aurocs": [], "seeds": []})
            entry["aurocs"].append(value)
            entry["seeds"].append(r.seed)
        for entry in per_class.values():
            entry["auroc_mean"] = float(np.mean(entry["aurocs"]))
            entry["auroc_std"] = float(np.std(entry["aurocs"]))
        means = [e["auroc_mean"] for e in per_class.values()]
        return {"mode": self.mode, "per_class": per_class, "auroc_mean": float(np.mean(means)),
                "auroc_std_over_classes": float(np.std(means)),
                "auroc_std_over_seeds": float(np.mean([e["auroc_std"] for e in per_class.values()]))}
