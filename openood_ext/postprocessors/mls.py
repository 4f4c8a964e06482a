"""Maximum logit score (Hendrycks et al., "Scaling Out-of-Distribution Detection for Real-World
Settings", ICML 2022)."""

from __future__ import annotations

import numpy as np

from ..features import NetOutputs
from .base import Postprocessor, as_numpy
from .registry import POSTPROCESSORS


@POSTPROCESSORS.register("mls", aliases=["maxlogit"])
class MaxLogitPostprocessor(Postprocessor):
    """MLS: conf = max_c logits_c, the unnormalised maximum logit; higher = more ID."""

    def score(self, outputs: NetOutputs) -> np.ndarray:
        return as_numpy(outputs.logits.double().max(dim=1).values)
