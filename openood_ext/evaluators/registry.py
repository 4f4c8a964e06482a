"""The EVALUATORS registry."""

from ..registry import Registry

EVALUATORS = Registry("evaluators", home="openood_ext.evaluators")
