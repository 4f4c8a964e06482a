"""Pipelines: ``train`` and ``test_ood`` (more register here)."""

from .registry import PIPELINES
from . import ad, ad_sweep, test_ood, train  # noqa: F401  (registration)

__all__ = ["PIPELINES"]
