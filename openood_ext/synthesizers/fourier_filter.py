"""EOE's frequency filters (Liznerski et al., TMLR 2022, ``src/eoe/utils/transformations.py``
``GpuDFTLowPassFilter``/``GpuDFTHighPassFilter``) as a function, a per-image transform, an outlier source
that wraps any image source, and the ``ms_mode`` spec that says which data parts are filtered.

``ms_mode`` (``benchmark.preprocessor.ms_mode``, read by the AD pipelines)::

    ms_mode: {mode: lpf, magnitude: 14, parts: [train_nominal, train_oe, test_nominal, test_anomalous]}

EOE's ``--ms-mode lpf+train_nominal ... --magnitude e``: the same filter on any subset of the four parts.
EOE clamps a magnitude above half the image to half the image; here that is a config error (the
clamped value is the same filter, so ask for it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch

from ..errors import ConfigError
from ..schema import NonNegativeInt, check_value
from .base import OutlierSource
from .pixels import PixelSpace
from .registry import OUTLIER_SOURCES

Mode = Literal["lpf", "hpf"]
MODES = get_args(Mode)
PARTS = ("train_nominal", "train_oe", "test_nominal", "test_anomalous")


def fourier_filter(images01: torch.Tensor, mode: str, magnitude: int) -> torch.Tensor:
    """Low- or high-pass filter images [B, C, H, W] given in pixel units; returns them min-max scaled.

    Per image and channel: F = fftshift(fft2(x)). ``lpf`` zeroes the first and last ``magnitude``
    rows and columns of F (the high frequencies at the border of the shifted spectrum); ``hpf`` zeroes
    the central block ``[H/2 - e, H/2 + e) x [W/2 - e, W/2 + e)``. Then x' = real(ifft2(ifftshift(F)))
    and each image is scaled to [0, 1] by its own min and max (over channels and pixels: subtract the
    min, divide by the new max, as EOE's ``MinMaxNorm``). ``magnitude`` 0 returns the images unchanged
    (EOE's filters are the identity for e <= 0; no min-max scaling either).
    """
    if mode not in MODES:
        raise ConfigError(f"fourier filter mode: expected one of {', '.join(MODES)}, got {mode!r}")
    h, w = images01.shape[-2:]
    e = int(magnitude)
    if e < 0 or e > min(h, w) // 2:
        raise ConfigError(f"fourier filter magnitude: expected 0..{min(h, w) // 2} for {h}x{w} images, got {magnitude}")
    if e == 0:
        return images01
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


@dataclass(frozen=True)
class MSMode:
    """A validated ``ms_mode``: filter ``mode`` with ``magnitude`` on the data ``parts`` (subset of PARTS)."""

    mode: str
    magnitude: int
    parts: tuple[str, ...]

    @classmethod
    def from_config(cls, spec: Any, image_size: int, where: str = "benchmark.preprocessor.ms_mode") -> MSMode | None:
        """None for a null spec; ConfigError (one line naming ``where``) for anything malformed."""
        if spec is None:
            return None
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}: expected a mapping {{mode: lpf|hpf, magnitude: E, parts: [...]}}, got {spec!r}")
        unknown = sorted(set(spec) - {"mode", "magnitude", "parts"})
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown} (known: mode, magnitude, parts)")
        mode = spec.get("mode", "lpf")
        check_value(f"{where}.mode", mode, Mode)
        e = spec.get("magnitude", 14)
        check_value(f"{where}.magnitude", e, NonNegativeInt)
        if e > image_size // 2:
            raise ConfigError(f"{where}.magnitude: {e} is larger than half the {image_size}x{image_size} image "
                              f"({image_size // 2}; EOE would clamp it to {image_size // 2})")
        parts = spec.get("parts", list(PARTS))
        if isinstance(parts, str):
            parts = [parts]
        if not isinstance(parts, (list, tuple)) or not parts or any(p not in PARTS for p in parts):
            raise ConfigError(f"{where}.parts: expected a non-empty list of {', '.join(PARTS)}, got {parts!r}")
        return cls(mode, e, tuple(dict.fromkeys(parts)))


class FourierTransform:
    """Transform of a *normalised* image [C, H, W] or batch [B, C, H, W] (then also a batched op of
    :mod:`openood_ext.datasets.batch_transforms`: ``op(x, generator, labels)``; it draws nothing): back to
    pixel units, :func:`fourier_filter`, normalised again (EOE filters before its Normalize; this is the
    same up to float rounding)."""

    def __init__(self, pixels: PixelSpace, mode: str, magnitude: int):
        self.pixels, self.mode, self.magnitude = pixels, mode, magnitude

    def __call__(self, x: torch.Tensor, generator=None, labels=None) -> torch.Tensor:
        if self.magnitude == 0:
            return x
        single = x.ndim == 3
        out = self.pixels.from_unit(fourier_filter(self.pixels.to_unit(x[None] if single else x), self.mode, self.magnitude))
        return out[0] if single else out

    def __repr__(self) -> str:
        return f"FourierTransform({self.mode}, magnitude={self.magnitude})"


@OUTLIER_SOURCES.register("fourier_filter")
class FourierFiltered(OutlierSource):
    """Wraps an image source (``source``: a OUTLIER_SOURCES mapping, default ``oe_images``) and filters
    its images with :func:`fourier_filter` (``mode`` lpf/hpf, ``magnitude`` e), in pixel space before
    the benchmark's normalisation, as EOE does."""

    kind = "images"

    def __init__(self, mode: Mode = "lpf", magnitude: NonNegativeInt = 14, source: Mapping[str, Any] | str | None = None):
        self.mode, self.magnitude = mode, magnitude
        self.inner = OUTLIER_SOURCES.build(source or "oe_images")
        if getattr(self.inner, "kind", "images") != "images":
            raise ConfigError("trainer.outliers.source: fourier_filter wraps image sources only")

    @classmethod
    def around(cls, source: OutlierSource, mode: str, magnitude: int) -> FourierFiltered:
        """Wrap an already built image source (``ms_mode`` with ``train_oe``)."""
        wrapped = cls(mode, magnitude, source={"name": "oe_images"})
        wrapped.inner = source
        return wrapped

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

    def use_tensor_path(self, data, device, log) -> bool:
        """The wrapped source draws from the decoded-image cache when it can (the filter acts on its batches)."""
        inner = getattr(self.inner, "use_tensor_path", None)
        return bool(inner(data, device, log)) if inner is not None else False

    def draw(self, batch) -> torch.Tensor:
        raw = self.pixels.to_unit(self.inner.draw(batch))
        return self.pixels.from_unit(fourier_filter(raw, self.mode, self.magnitude))

    def describe(self) -> str:
        return f"fourier_filter {self.mode} e={self.magnitude} of [{self.inner.describe()}]"

    def state_dict(self) -> dict:
        return {"inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state.get("inner", {}))
