"""Hypersphere classification distance (Ruff et al. 2021; used by FCDD and EOE)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from ..features import NetOutputs
from .base import Postprocessor, as_numpy
from .registry import POSTPROCESSORS


@POSTPROCESSORS.register("hsc")
class HSCPostprocessor(Postprocessor):
    """HSC: conf = -(sqrt(||z - c||^2 + 1) - 1), the negative pseudo-Huber distance to a centre c.

    Args:
        center: ``zero`` (c = 0, for networks trained with the HSC loss) or ``fit`` (c = mean of the
            ID training outputs).
        use: which output is z: ``features`` (penultimate, default) or ``logits``.
    """

    def __init__(self, center: Literal["zero", "fit"] = "zero", use: Literal["features", "logits"] = "features"):
        if center not in ("zero", "fit"):
            raise ValueError(f"hsc: center must be 'zero' or 'fit', got {center!r}")
        if use not in ("features", "logits"):
            raise ValueError(f"hsc: use must be 'features' or 'logits', got {use!r}")
        self.center, self.use = center, use
        self._c: torch.Tensor | None = None

    def _z(self, outputs: NetOutputs) -> torch.Tensor:
        return getattr(outputs, self.use).double()

    def fit(self, train_outputs: NetOutputs | None = None, **_):
        if self.center == "fit":
            if train_outputs is None:
                raise ValueError("hsc with center='fit' needs ID training outputs")
            self._c = self._z(train_outputs).mean(dim=0)
        return self

    def score(self, outputs: NetOutputs) -> np.ndarray:
        z = self._z(outputs)
        if self.center == "fit":
            if self._c is None:
                raise RuntimeError("hsc: call fit() before score() when center='fit'")
            z = z - self._c
        return as_numpy(-(torch.sqrt((z * z).sum(dim=1) + 1.0) - 1.0))
