"""Evaluators: turn scores into metrics. ``metrics.ood_metrics`` is the public metric function."""

from .registry import EVALUATORS
from . import ad_ovr, ood, osr, pixel  # noqa: F401  (registration)
from .metrics import ood_metrics

__all__ = ["EVALUATORS", "ood_metrics"]
