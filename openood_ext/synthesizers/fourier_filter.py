"""EOE's frequency filters (Liznerski et al., TMLR 2022, ``utils/transformations.py``) as a function and
as an outlier source that wraps any image source."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ..errors import ConfigError
from .base import OutlierSource
from .pixels import PixelSpace
from .registry import SYNTHESIZERS

MODES = ("lpf", "hpf")


def fourier_filter(images01: torch.Tensor, mode: str, magnitude: int) -> torch.Tensor:
    """Low- or high-pass filter images [B, C, H, W] given in pixel units; returns them min-max scaled.

    Per image and channel: F = fftshift(fft2(x)). ``lpf`` zeroes the first and last ``magnitude``
    rows and columns of F (the high frequencies at the border of the shifted spectrum); ``hpf`` zeroes
    the central block ``[H/2 - e, H/2 + e) x [W/2 - e, W/2 + e)``. Then x' = real(ifft2(ifftshift(F)))
    and each image is scaled to [0, 1] by its own min and max (over channels and pixels).
    ``magnitude`` 0 leaves the spectrum unchanged (only the min-max scaling applies).
    """
    if mode not in MODES:
        raise ConfigError(f"fourier filter mode: expected one of {', '.join(MODES)}, got {mode!r}")
    h, w = images01.shape[-2:]
    e = int(magnitude)
    if e < 0 or e > min(h, w) // 2:
        raise ConfigError(f"fourier filter magnitude: expected 0..{min(h, w) // 2} for {h}x{w} images, got {magnitude}")
    spec = torch.fft.fftshift(torch.fft.fft2(images01.double()), dim=(-2, -1))
    if e > 0:
        if mode == "lpf":
            spec[..., :e, :] = 0
            spec[..., h - e:, :] = 0
            spec[..., :, :e] = 0
            spec[..., :, w - e:] = 0
        else:
            spec[..., h // 2 - e:h // 2 + e, w // 2 - e:w // 2 + e] = 0
    out = torch.fft.ifft2(torch.fft.ifftshift(spec, dim=(-2, -1))).real
    flat = out.flatten(1)
    lo, hi = flat.min(1).values.view(-1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1)
    return ((out - lo) / (hi - lo).clamp_min(1e-12)).to(images01.dtype)


@SYNTHESIZERS.register("fourier_filter")
class FourierFiltered(OutlierSource):
    """Wraps an image source (``source``: a SYNTHESIZERS mapping, default ``oe_images``) and filters
    its images with :func:`fourier_filter` (``mode`` lpf/hpf, ``magnitude`` e), in pixel space before
    the benchmark's normalisation, as EOE does."""

    kind = "images"

    def __init__(self, mode: str = "lpf", magnitude: int = 14, source: Mapping[str, Any] | str | None = None):
        if mode not in MODES:
            raise ConfigError(f"trainer.outliers.mode: expected one of {', '.join(MODES)}, got {mode!r}")
        if not isinstance(magnitude, int) or isinstance(magnitude, bool) or magnitude < 0:
            raise ConfigError(f"trainer.outliers.magnitude: expected an integer >= 0, got {magnitude!r}")
        self.mode, self.magnitude = mode, magnitude
        self.inner = SYNTHESIZERS.build(source or "oe_images")
        if getattr(self.inner, "kind", "images") != "images":
            raise ConfigError("trainer.outliers.source: fourier_filter wraps image sources only")

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.pixels = PixelSpace(ctx.benchmark.preprocessor)
        size = self.pixels.image_size
        if self.magnitude > size // 2:
            raise ConfigError(f"trainer.outliers.magnitude: {self.magnitude} is larger than half the "
                              f"{size}x{size} image ({size // 2})")
        self.inner.setup(ctx)

    def check(self) -> None:
        self.inner.check()

    def on_epoch_start(self, epoch: int) -> None:
        self.inner.on_epoch_start(epoch)

    def draw(self, batch) -> torch.Tensor:
        raw = self.pixels.to_unit(self.inner.draw(batch))
        return self.pixels.from_unit(fourier_filter(raw, self.mode, self.magnitude))

    def describe(self) -> str:
        return f"fourier_filter {self.mode} e={self.magnitude} of [{self.inner.describe()}]"

    def state_dict(self) -> dict:
        return {"inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state.get("inner", {}))
