"""The ``ood`` evaluator: ID accuracy and OOD metrics per OOD set and per near/far group."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError
from .f1 import open_set_f1
from .metrics import accuracy, check_scores, ood_metrics
from .registry import EVALUATORS

GROUP_DATASET = {"near": "nearood", "far": "farood"}


@dataclass
class SplitScores:
    """Scores of one postprocessor on one split: confidences [N], predictions [N], labels [N].

    A score whose scale depends on the whole evaluated set (VMDLS's published shift M = the maximum over
    the ID test and one OOD set scored together) also carries its per-sample ``parts`` (name -> [N]) and
    ``rescore(id_parts, ood_parts) -> (id conf, ood conf)``, which gives the confidences of one pair; the
    evaluator then uses those for that pair's metrics, and ``conf`` (the split scored alone) elsewhere.
    """

    conf: np.ndarray
    preds: np.ndarray
    labels: np.ndarray
    parts: dict[str, np.ndarray] | None = None
    rescore: Callable[[dict, dict], tuple[np.ndarray, np.ndarray]] | None = None


def _pair_conf(id_test: SplitScores, ood: SplitScores) -> tuple[np.ndarray, np.ndarray]:
    if ood.rescore is not None and id_test.parts is not None and ood.parts is not None:
        return ood.rescore(id_test.parts, ood.parts)
    return id_test.conf, ood.conf


@dataclass
class EvalResult:
    """Long-format metric rows plus the nested summary stored in metrics.json."""

    rows: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


@EVALUATORS.register("ood")
class OODEvaluator:
    """ID accuracy; AUROC, AUPR-In, AUPR-Out, FPR@95 per OOD set; unweighted means per near/far group.

    A group whose sets were not all evaluated (some skipped as unavailable) gets its mean marked
    ``partial``; a group with no evaluated set gets no mean at all.
    """

    family = "splits"  # the contract of the evaluators package docstring
    # f1_95: macro-F1 over the known classes + "unknown" at the threshold keeping 95 % of ID (VMDLS's metric)
    metric_names = ("auroc", "aupr_in", "aupr_out", "fpr95", "fpr95_openood", "f1_95")

    def evaluate(self, postprocessor: str, id_test: SplitScores, ood: dict[str, tuple[str, SplitScores]],
                 skipped: dict[str, tuple[str, str]] | None = None, num_classes: int | None = None,
                 csid: dict[str, SplitScores] | None = None) -> EvalResult:
        """
        Args:
            postprocessor: name used in rows and error messages.
            id_test: scores of the ID test split (labels are class indices).
            ood: set name -> (group, scores) for every evaluated OOD set.
            skipped: set name -> (group, reason) for OOD / csid sets that could not be evaluated.
            num_classes: K for the F1 metric (default: largest ID label + 1).
            csid: None for the standard setting; the full-spectrum setting (OpenOOD v1.5's ``fsood``) gives
                set name -> scores of every evaluated covariate-shifted ID set (possibly none).

        Full-spectrum setting, as OpenOOD v1.5's ``Evaluator.eval_ood(fsood=True)``: the ID side of every
        OOD metric is the ID test set followed by the csid sets in order (confidences, predictions and
        labels concatenated), and the accuracy row ``id_test``/``accuracy`` is over that same pool (correct
        / total over ID test + csid, OpenOOD's ``csid_acc``). Added here: one ``accuracy`` row per csid set
        (group ``csid``) and, in the summary, ``fsood``, ``csid_sets``, ``id_test_accuracy`` (ID test alone)
        and ``csid_accuracy`` per set.
        """
        skipped = skipped or {}
        self._check(postprocessor, "id_test", id_test.conf)
        result = EvalResult()
        extra: dict = {}
        if csid is not None:
            for name, scores in csid.items():
                self._check(postprocessor, name, scores.conf)
            extra = {"fsood": True, "csid_sets": list(csid), "id_test_accuracy": accuracy(id_test.preds, id_test.labels),
                     "csid_accuracy": {name: accuracy(s.preds, s.labels) for name, s in csid.items()}}
            pool = [id_test, *csid.values()]
            parts = None
            if all(s.parts is not None for s in pool):
                parts = {k: np.concatenate([s.parts[k] for s in pool]) for k in id_test.parts}
            id_test = SplitScores(np.concatenate([s.conf for s in pool]), np.concatenate([s.preds for s in pool]),
                                  np.concatenate([s.labels for s in pool]), parts, id_test.rescore)
        acc = accuracy(id_test.preds, id_test.labels)
        result.rows.append(_row(postprocessor, "id_test", "id", "accuracy", acc))
        for name, value in extra.get("csid_accuracy", {}).items():
            result.rows.append(_row(postprocessor, name, "csid", "accuracy", value))
        per_set = {}
        for set_name, (group, scores) in ood.items():
            self._check(postprocessor, set_name, scores.conf)
            id_conf, ood_conf = _pair_conf(id_test, scores)
            values = ood_metrics(id_conf, ood_conf)
            values["f1_95"] = open_set_f1(id_conf, id_test.preds, id_test.labels, ood_conf, scores.preds,
                                          num_classes=num_classes)["f1"]
            per_set[set_name] = {"group": group, "n": int(len(scores.conf)), **values}
            result.rows += [_row(postprocessor, set_name, group, m, values[m]) for m in self.metric_names]
        groups = {}
        for group, dataset in GROUP_DATASET.items():
            present = [s for s, v in per_set.items() if v["group"] == group]
            absent = sorted(s for s, (g, _) in skipped.items() if g == group)
            if not present:
                continue
            means = {m: float(np.mean([per_set[s][m] for s in present])) for m in self.metric_names}
            partial = bool(absent)
            groups[group] = {**means, "sets": present, "skipped_sets": absent, "partial": partial}
            result.rows += [_row(postprocessor, dataset, group, m, means[m], partial) for m in self.metric_names]
        result.summary = {"id_accuracy": acc, **extra, "sets": per_set, "groups": groups,
                          "skipped": {s: {"group": g, "reason": r} for s, (g, r) in skipped.items()}}
        return result

    @staticmethod
    def _check(postprocessor: str, dataset: str, conf: np.ndarray) -> None:
        try:
            check_scores(conf, f"scores of postprocessor '{postprocessor}' on '{dataset}'")
        except ValueError as exc:
            raise DataError(str(exc)) from None


def _row(pp: str, dataset: str, group: str, metric: str, value: float, partial: bool = False) -> dict:
    return {"postprocessor": pp, "dataset": dataset, "group": group, "metric": metric,
            "value": float(value), "partial": partial}
