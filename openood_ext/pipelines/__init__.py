"""Pipelines: a run's whole protocol, built from the parts below them (``train``, ``test_ood``, and the
anomaly-detection protocols of :mod:`.ad`). Each registers itself in :data:`PIPELINES` on import."""

from .registry import PIPELINES
from . import ad, test_ood, train  # noqa: F401  (registration)

__all__ = ["PIPELINES"]
