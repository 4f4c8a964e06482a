"""Evaluators: turn scores into metrics. ``metrics.ood_metrics`` is the public metric function.

One registry (:data:`EVALUATORS`), one contract per *family*; every evaluator class says which by its
``family`` attribute, and never takes a signature any other member of its family does not:

``family = "splits"`` (``ood``): one postprocessor's scores on a benchmark's splits, as the
:class:`~openood_ext.postprocessors.schedule.Scheduler` returns them::

    evaluate(postprocessor: str, id_test: SplitScores, ood: Mapping[str, tuple[str, SplitScores]],
             skipped: Mapping[str, tuple[str, str]] | None = None, num_classes: int | None = None) -> EvalResult

    SplitScores: conf float64 [N] (higher = more in-distribution), preds int64 [N], labels [N] (-1: OOD);
    ood: set name -> (group "near"/"far", scores); skipped: set name -> (group, reason);
    num_classes: K of the ID classes (always given by the pipeline; an evaluator may ignore it).
    EvalResult: ``rows`` (long-format metric rows) and ``summary`` (the nested dict of metrics.json).

  The ``evaluator:`` key of the ``test_ood`` pipeline names one of these; the pipeline refuses any other.

``family = "arrays"`` (``osr``, ``ad_ovr``, ``pixel``): whole-experiment arrays in, a dict of metrics
(fractions) out, with the names of the method and split used in errors::

    evaluate(*arrays, method: str = ..., split: str = ...) -> dict

  ``arrays`` are the family member's own (``osr``: conf, preds, labels, known; ``ad_ovr``: ADRecords;
  ``pixel``: heatmaps, masks; see each class). Scores whose sign is "higher = more anomalous" (AD) say so.

Every evaluator raises :class:`~openood_ext.errors.DataError` naming method and split for NaN/Inf scores or
arrays that do not match.
"""

from .registry import EVALUATORS
from . import ad_ovr, ood, osr, pixel  # noqa: F401  (registration)
from .metrics import ood_metrics

#: the two evaluator families (see the module docstring)
FAMILIES = ("splits", "arrays")


def family_of(evaluator) -> str:
    """An evaluator's family; a plugin without ``family`` is taken to follow the ``splits`` contract."""
    return getattr(evaluator, "family", "splits")


__all__ = ["EVALUATORS", "FAMILIES", "family_of", "ood_metrics"]
