"""The ``ad_ovr`` evaluator: one-vs-rest / leave-one-out anomaly detection, as FCDD and EOE report it.

In one-vs-rest, one class is normal and all others are anomalies; in leave-one-out, one class is the
anomaly and all others are normal. Either way a benchmark is a set of experiments, one per (class, seed),
each giving anomaly scores (higher = more anomalous) and binary labels (1 = anomaly) on the test set.

Reported (AUROC as fractions, scikit-learn's ``roc_auc_score`` with the anomaly as the positive class;
every std is the population std, ddof=0):

* ``per_class[c]``: ``aurocs`` (one per seed, in ``seeds`` order), ``auroc_mean``, ``auroc_std`` (over seeds);
* ``auroc_mean``: mean over classes of the per-class means (FCDD's and EOE's headline number);
* ``auroc_std_over_classes``: std over classes of the per-class means;
* ``auroc_std_over_seeds``: mean over classes of the per-class std over seeds;
* ``per_seed[s]``: mean over classes for seed ``s`` (only seeds that ran every class), and
  ``auroc_std_of_seed_means``: std of those (0 with a single seed; absent when no seed ran every class).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

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


def as_records(results: Iterable[ADRecord] | Mapping) -> list[ADRecord]:
    """ADRecords from a list of them or from ``{(cls, seed): (scores, is_anomaly)}``."""
    if isinstance(results, Mapping):
        out = []
        for key, value in results.items():
            if not (isinstance(key, tuple) and len(key) == 2 and len(value) == 2):
                raise DataError("ad_ovr: expected {(class, seed): (scores, is_anomaly)}, "
                                f"got key {key!r} -> {type(value).__name__}")
            out.append(ADRecord(key[0], key[1], *value))
        return out
    return list(results)


@EVALUATORS.register("ad_ovr")
class OneVsRestEvaluator:
    """AD AUROC per class (mean ± std over seeds) and over classes, one-vs-rest or leave-one-out."""

    family = "arrays"  # the contract of the evaluators package docstring

    def __init__(self, mode: str = "one_vs_rest"):
        if mode not in MODES:
            raise ValueError(f"ad_ovr: mode must be one of {MODES}, got {mode!r}")
        self.mode = mode

    def evaluate(self, records: Iterable[ADRecord] | Mapping, method: str = "ad", split: str = "test", *,
                 dataset: str | None = None) -> dict:
        """Aggregate per-(class, seed) results (see the module doc for the keys).

        Args:
            records: ADRecords, or ``{(class, seed): (scores [N], is_anomaly [N])}``.
            method: the postprocessor/method, named in errors.
            split: the benchmark/split, named in errors (``dataset``: its older name, still accepted).
        Raises DataError naming method, dataset, class and seed for NaN/Inf scores, labels that are not
        binary, mismatched lengths, a test set with only one class, or a repeated (class, seed).
        """
        dataset = split if dataset is None else dataset
        records = as_records(records)
        if not records:
            raise DataError(f"ad_ovr: no results to evaluate for '{method}' on '{dataset}'")
        per_class: dict = {}
        for r in records:
            where = f"anomaly scores of '{method}' on '{dataset}' for class {r.cls} (seed {r.seed})"
            labels = np.asarray(r.is_anomaly)
            if labels.dtype != bool and labels.size and not np.isin(labels, (0, 1)).all():
                raise DataError(f"{where}: labels must be 0 (normal) / 1 (anomaly), found "
                                f"{np.unique(labels[~np.isin(labels, (0, 1))])[:5].tolist()}")
            try:
                value = auroc(r.scores, labels)
            except ValueError as exc:
                raise DataError(f"{where}: {exc}") from None
            entry = per_class.setdefault(r.cls, {"aurocs": [], "seeds": []})
            if r.seed in entry["seeds"]:
                raise DataError(f"{where}: this (class, seed) is given twice")
            entry["aurocs"].append(value)
            entry["seeds"].append(r.seed)
        for entry in per_class.values():
            entry["auroc_mean"] = float(np.mean(entry["aurocs"]))
            entry["auroc_std"] = float(np.std(entry["aurocs"]))
        means = [e["auroc_mean"] for e in per_class.values()]
        out = {"mode": self.mode, "per_class": per_class, "n_classes": len(per_class),
               "auroc_mean": float(np.mean(means)), "auroc_std_over_classes": float(np.std(means)),
               "auroc_std_over_seeds": float(np.mean([e["auroc_std"] for e in per_class.values()]))}
        all_seeds = sorted({s for e in per_class.values() for s in e["seeds"]}, key=str)
        per_seed = {s: float(np.mean([e["aurocs"][e["seeds"].index(s)] for e in per_class.values()]))
                    for s in all_seeds if all(s in e["seeds"] for e in per_class.values())}
        out["per_seed"] = per_seed
        if per_seed:
            out["auroc_std_of_seed_means"] = float(np.std(list(per_seed.values())))
        return out
