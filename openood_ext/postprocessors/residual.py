"""Residual score: the norm of the feature outside the principal subspace (the residual part of ViM,
Wang et al., "ViM: Out-Of-Distribution with Virtual-logit Matching", CVPR 2022)."""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..schema import PositiveInt
from ..features import NetOutputs
from .base import Postprocessor, as_numpy
from .common import (check_fitted, effective_dim, fc_params, fit_outputs, residual_basis, residual_norm,
                     vim_origin)
from .registry import POSTPROCESSORS


@POSTPROCESSORS.register("residual")
class ResidualPostprocessor(Postprocessor):
    """Residual: conf = -||(z - u) NS||, NS spans the non-principal space, u = -pinv(W) b; higher = more ID.

    Args:
        dim: principal-space dimension (OpenOOD default 512, meant for 2048-d features; when
            ``dim >= D`` D/2 is used, with a warning).
        fit_on: ``val`` (default; OpenOOD fits the subspace on the ID validation features) or ``train``.
    Needs ``fc_weight``/``fc_bias`` in the extras.
    """

    def __init__(self, dim: PositiveInt = 512, fit_on: Literal["train", "val"] = "val"):
        if int(dim) < 1:
            raise ValueError(f"residual: dim must be >= 1, got {dim}")
        if fit_on not in ("train", "val"):
            raise ValueError(f"residual: fit_on must be 'train' or 'val', got {fit_on!r}")
        self.dim, self.fit_on = int(dim), fit_on
        self.dim_used: int | None = None
        self._u = self._ns = None

    def fit(self, train_outputs: NetOutputs | None = None, val_outputs: NetOutputs | None = None, **_):
        out = fit_outputs(train_outputs, val_outputs, self.fit_on, "residual")
        w, b = fc_params(out, "residual")
        z = out.features.double()
        self.dim_used = effective_dim(self.dim, z.shape[1], "residual")
        self._u = vim_origin(w, b)
        self._ns = residual_basis(z, self._u, self.dim_used)
        return self

    def score(self, outputs: NetOutputs) -> np.ndarray:
        check_fitted(self._ns, "residual")
        return as_numpy(-residual_norm(outputs.features, self._u, self._ns))
