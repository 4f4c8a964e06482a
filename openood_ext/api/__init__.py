"""Bring your own model: :class:`Evaluator` (a benchmark's OOD table for any classifier) and
:class:`Detector` (fit, calibrate, save and load one OOD detector for deployment).

Both take any ``nn.Module`` mapping images to logits; :mod:`openood_ext.api.model` finds its penultimate
features and classifier layer. ``from openood_ext import Evaluator, Detector`` imports this package lazily.
"""

from .detector import Detector
from .evaluator import Evaluator
from .model import ModelAdapter

__all__ = ["Detector", "Evaluator", "ModelAdapter"]
