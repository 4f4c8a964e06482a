"""Pipelines: ``train`` and ``test_ood`` (more register here)."""

from .registry import PIPELINES
from . import ad, ad_imagenet30, ad_sweep, test_ood, train  # noqa: F401  (registration)
from . import oe_search as _oe_search  # noqa: F401  (registration: EOE OE-image search)

__all__ = ["PIPELINES"]
