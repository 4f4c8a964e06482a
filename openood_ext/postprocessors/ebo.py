"""Energy-based OOD score (Liu et al., NeurIPS 2020)."""

from __future__ import annotations

import numpy as np

from ..schema import PositiveFloat
from ..features import NetOutputs
from .base import Postprocessor, as_numpy
from .registry import POSTPROCESSORS


@POSTPROCESSORS.register("ebo", aliases=["energy"])
class EnergyPostprocessor(Postprocessor):
    """EBO (energy): conf = T * logsumexp(logits / T), the negative free energy; T=1 as in OpenOOD."""

    def __init__(self, temperature: PositiveFloat = 1.0):
        if temperature <= 0:
            raise ValueError(f"ebo: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def score(self, outputs: NetOutputs) -> np.ndarray:
        t = self.temperature
        return as_numpy(t * (outputs.logits.double() / t).logsumexp(dim=1))
