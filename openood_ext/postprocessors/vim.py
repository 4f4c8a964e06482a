"""ViM: virtual-logit matching (Wang et al., "ViM: Out-Of-Distribution with Virtual-logit Matching",
CVPR 2022)."""

from __future__ import annotations

import numpy as np

from ..schema import PositiveInt
from ..features import NetOutputs
from .base import Postprocessor, as_numpy
from .common import (check_fitted, effective_dim, energy, fc_params, linear_logits, residual_basis,
                     residual_norm, vim_origin)
from .registry import POSTPROCESSORS


@POSTPROCESSORS.register("vim")
class ViMPostprocessor(Postprocessor):
    """ViM: conf = logsumexp(logits) - alpha ||(z - u) NS||, NS spans the non-principal space; higher = more ID.

    ``u = -pinv(W) b``; the principal space is spanned by the eigenvectors of the ``dim`` largest
    eigenvalues of ``(Z - u)^T (Z - u) / N`` over ID training features; ``alpha`` = mean max logit /
    mean residual norm on those features.

    Args:
        dim: principal-space dimension (OpenOOD default 256, for 512-d features; when
            ``dim >= D`` D/2 is used, with a warning).
    Needs ``fc_weight``/``fc_bias`` in the extras.
    """

    def __init__(self, dim: PositiveInt = 256):
        if int(dim) < 1:
            raise ValueError(f"vim: dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self.dim_used: int | None = None
        self.alpha: float | None = None
        self._u = self._ns = None

    def fit(self, train_outputs: NetOutputs | None = None, **_):
        if train_outputs is None:
            raise ValueError("vim needs ID training outputs to fit")
        w, b = fc_params(train_outputs, "vim")
        z = train_outputs.features.double()
        self.dim_used = effective_dim(self.dim, z.shape[1], "vim")
        self._u = vim_origin(w, b)
        self._ns = residual_basis(z, self._u, self.dim_used)
        vlogit = residual_norm(z, self._u, self._ns)
        self.alpha = float(linear_logits(z, w, b).max(dim=1).values.mean() / vlogit.mean())
        return self

    def score(self, outputs: NetOutputs) -> np.ndarray:
        check_fitted(self._ns, "vim")
        w, b = fc_params(outputs, "vim")
        z = outputs.features.double()
        return as_numpy(energy(linear_logits(z, w, b)) - self.alpha * residual_norm(z, self._u, self._ns))
