"""The EVALUATORS registry."""

from ..registry import Registry

EVALUATORS = Registry("evaluators")
