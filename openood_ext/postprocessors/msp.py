"""Maximum softmax probability (Hendrycks & Gimpel, ICLR 2017)."""

from __future__ import annotations

import numpy as np

from ..features import NetOutputs
from .base import Postprocessor, as_numpy
from .registry import POSTPROCESSORS


@POSTPROCESSORS.register("msp")
class MSPPostprocessor(Postprocessor):
    """MSP: conf = max_c softmax(logits)_c, in [1/C, 1]."""

    def score(self, outputs: NetOutputs) -> np.ndarray:
        return as_numpy(outputs.logits.double().softmax(dim=1).max(dim=1).values)
