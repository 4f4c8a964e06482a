"""Receptive-field bookkeeping and FCDD's receptive-field upsampling (Liznerski et al., ICLR 2021).

Receptive field of an output unit, updated layer by layer (FCDD ``models/bases.py``): start from
n = W (output size), j = 1 (jump: input pixels between neighbouring output units), r = 1 (size),
s = 0 (input position of the centre of the first output unit's field); after a conv/pool with kernel k,
stride t, padding p::

    n <- (n + 2p - k) // t + 1;  r <- r + (k - 1) j;  s <- s + ((k - 1) / 2 - p) j;  j <- j t

Upsampling (``receptive_upsample``) maps an output map [B, 1, n, n] back to the input size with a
transposed convolution whose kernel is FCDD's *unnormalised* Gaussian of size r (:func:`gkern`), stride
j, and the exact output padding / crop of the published code, so that a single hot output unit lights
up a blob centred on its receptive field (input position s + i j).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.signal.windows import gaussian
from torch import nn

from ..errors import ConfigError
from ..utils.runtime import full_precision


@dataclass(frozen=True)
class ReceptiveField:
    """n: output side; r: field size; j: jump (stride product); s: centre of the first unit's field."""

    n: int
    r: int = 1
    j: int = 1
    s: float = 0.0
    img_size: int = 0

    def update(self, k: int, t: int, p: int) -> "ReceptiveField":
        return ReceptiveField((self.n + 2 * p - k) // t + 1, self.r + (k - 1) * self.j,
                              self.j * t, self.s + ((k - 1) / 2 - p) * self.j, self.img_size)

    def as_dict(self) -> dict:
        return {"n": self.n, "r": self.r, "j": self.j, "s": self.s, "img_size": self.img_size}


def _pair(v) -> int:
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise ValueError(f"receptive field bookkeeping needs square kernels/strides, got {v}")
        return int(v[0])
    return int(v)


def receptive_field(module: nn.Module, img_size: int) -> ReceptiveField:
    """Walk ``module``'s convolutions and poolings in registration order; other layers keep the field.
    Raises ConfigError when the field is larger than the input or the map vanishes."""
    rf = ReceptiveField(img_size, img_size=img_size)
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, t, p = _pair(layer.kernel_size), _pair(layer.stride), _pair(layer.padding)
            rf = rf.update(k, t, p)
    if rf.n < 1:
        raise ConfigError(f"network: input size {img_size} is too small for this network (output map {rf.n}x{rf.n})")
    return rf


def check_field_fits(rf: ReceptiveField) -> None:
    """ConfigError when the receptive field is larger than the input (FCDD's upsampling needs r <= W)."""
    if rf.r > rf.img_size:
        raise ConfigError(f"network: receptive field {rf.r} px is larger than the input ({rf.img_size} px); "
                          f"use a larger network.image_size or a smaller network")


def gkern1d(k: int, std: float) -> np.ndarray:
    """The 1-D profile of :func:`gkern` ([k], float64)."""
    if k < 1:
        raise ValueError(f"gkern: kernel size must be >= 1, got {k}")
    if k % 2 == 0:
        g = gaussian(k - 1, std)
        return np.insert(g, (k - 1) // 2, g[(k - 1) // 2]) / 2
    return gaussian(k, std)


def gkern(k: int, std: float) -> torch.Tensor:
    """FCDD's kernel [k, k]: outer product of ``gaussian(k, std)`` (peak 1, *not* normalised). For even k,
    ``gaussian(k - 1)`` with its centre value duplicated, all divided by 2 (2-D peak 0.25)."""
    g = gkern1d(k, std)
    return torch.from_numpy(np.outer(g, g)).float()


def kernel_size_to_std(k: int) -> float:
    """FCDD's default std when ``gauss_std`` is None."""
    return float(np.log10(0.45 * (k - 1) + 1) + 0.25) if k > 1 else 0.25


@full_precision  # the transposed convolutions in float32 under autocast too
def receptive_upsample(maps: torch.Tensor, rf: ReceptiveField, std: float | None = 1.2) -> torch.Tensor:
    """Output maps [B, 1, n, n] (or [B, n, n]) -> [B, 1, W, W] heat at input resolution (FCDD's
    ``receptive_upsample``): conv_transpose2d with :func:`gkern` (size r, unnormalised), stride j,
    output_padding W - (n - 1) j - 1 (one less for even r), then crop [pad - s : -pad - s] with
    pad = (r - 1) // 2, s = int(rf.s)."""
    check_field_fits(rf)
    x = maps.float()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.shape[-1] != rf.n or x.shape[-2] != rf.n:
        raise ValueError(f"receptive_upsample: maps of size {tuple(x.shape[-2:])}, network gives {rf.n}x{rf.n}")
    std = kernel_size_to_std(rf.r) if std is None else float(std)
    g = torch.from_numpy(gkern1d(rf.r, std)).float().to(x.device)
    out_pad = rf.img_size - (rf.n - 1) * rf.j - 1 - (1 if rf.r % 2 == 0 else 0)
    # The kernel is separable (outer product), so the 2-D transposed convolution is done as two 1-D ones
    # (same result up to float rounding, r times fewer operations).
    up = _transposed_1d(x, g.view(1, 1, 1, -1), rf.j, out_pad, dim=3)
    up = _transposed_1d(up, g.view(1, 1, -1, 1), rf.j, out_pad, dim=2)
    pad, s = (rf.r - 1) // 2, int(rf.s)
    lo = pad - s
    hi_h, hi_w = up.shape[-2] - pad - s, up.shape[-1] - pad - s
    return up[..., lo:hi_h, lo:hi_w]


def _transposed_1d(x: torch.Tensor, kernel: torch.Tensor, stride: int, out_pad: int, dim: int) -> torch.Tensor:
    """conv_transpose2d along one axis (``dim`` 2 = height, 3 = width) with FCDD's output padding."""
    st = (stride, 1) if dim == 2 else (1, stride)
    if 0 <= out_pad < stride:
        op = (out_pad, 0) if dim == 2 else (0, out_pad)
        return F.conv_transpose2d(x, kernel, stride=st, output_padding=op)
    # torch needs output_padding < stride: pad (or cut) the plain result instead, same geometry
    up = F.conv_transpose2d(x, kernel, stride=st)
    return F.pad(up, (0, 0, 0, out_pad) if dim == 2 else (0, out_pad, 0, 0))
