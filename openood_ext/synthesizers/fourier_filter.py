"""EOE's multiscale filters (Liznerski et al., TMLR 2022, ``src/eoe/utils/transformations.py``): the
frequency filters ``lpf``/``hpf`` (``GpuDFTLowPassFilter``/``GpuDFTHighPassFilter``), ``blur`` (``Blur``:
kornia's Gaussian blur, sigma = magnitude) and ``sharpen`` (``PilUnsharpMask``: PIL's unsharp mask,
percent = 100 * magnitude) as functions, a per-image transform, an outlier source that wraps any image
source, and the ``ms_mode`` spec that says which data parts are filtered.

``ms_mode`` (``benchmark.preprocessor.ms_mode``, read by the AD pipelines)::

    ms_mode: {mode: lpf, magnitude: 14, parts: [train_nominal, train_oe, test_nominal, test_anomalous]}

EOE's ``--ms-mode lpf+train_nominal ... --magnitude e``: the same filter on any subset of the four parts.
For lpf/hpf EOE clamps a magnitude above half the image to half the image; here that is a config error
(the clamped value is the same filter, so ask for it). Blur and sharpen take any magnitude (EOE's
``--magnitude`` is an integer for every mode)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch

from ..errors import ConfigError
from ..schema import NonNegativeInt, check_value
from .base import OutlierSource
from .pixels import PixelSpace
from .registry import OUTLIER_SOURCES

Mode = Literal["lpf", "hpf", "blur", "sharpen"]
MODES = get_args(Mode)
FREQUENCY_MODES = ("lpf", "hpf")
#: PIL's UnsharpMask defaults, which EOE keeps (it sets only ``percent``)
UNSHARP_RADIUS, UNSHARP_THRESHOLD = 2, 3
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
    if mode not in FREQUENCY_MODES:
        raise ConfigError(f"fourier filter mode: expected one of {', '.join(FREQUENCY_MODES)}, got {mode!r}")
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


def blur_kernel_size(sigma: float, width: int) -> int:
    """EOE's ``Blur`` kernel size: 2 * int(int(sigma / 2) + 0.5) + 1, at most the largest odd size below
    the image width (2 * int(int(W / 2) + 0.5) - 1), at least 3."""
    k = 2 * int(int(sigma / 2) + 0.5) + 1
    return max(min(k, 2 * int(int(width / 2) + 0.5) - 1), 3)


def gaussian_blur(images01: torch.Tensor, sigma: float) -> torch.Tensor:
    """EOE's ``blur`` on images [B, C, H, W] in pixel units: kornia's ``gaussian_blur2d`` with the kernel size
    of :func:`blur_kernel_size` and standard deviation ``sigma`` in both directions, i.e. the separable
    normalised kernel exp(-x^2 / (2 sigma^2)), x = -k//2 .. k//2, with reflect padding. sigma 0: unchanged."""
    if sigma <= 0:
        return images01
    k = blur_kernel_size(sigma, images01.shape[-1])
    x = torch.arange(k, dtype=torch.float64) - k // 2
    g = torch.exp(-x.pow(2) / (2.0 * float(sigma) ** 2))
    g = (g / g.sum()).to(images01.dtype)
    b, c, h, w = images01.shape
    flat = torch.nn.functional.pad(images01.reshape(b * c, 1, h, w), (k // 2,) * 4, mode="reflect")
    flat = torch.nn.functional.conv2d(flat, g.view(1, 1, 1, k))
    flat = torch.nn.functional.conv2d(flat, g.view(1, 1, k, 1))
    return flat.reshape(b, c, h, w)


def unsharp_mask(images01: torch.Tensor, magnitude: float) -> torch.Tensor:
    """EOE's ``sharpen`` on images [B, C, H, W] in pixel units: each image as 8-bit (round(255 x)) through
    PIL's ``UnsharpMask(radius=2, percent=int(100 * magnitude), threshold=3)``, back to [0, 1] (EOE filters the
    8-bit PIL image). magnitude 0 is PIL's percent 0: the quantised image, returned unchanged here."""
    if magnitude <= 0:
        return images01
    from PIL import Image, ImageFilter

    flt = ImageFilter.UnsharpMask(radius=UNSHARP_RADIUS, percent=int(magnitude * 100), threshold=UNSHARP_THRESHOLD)
    q = (images01.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    out = []
    for img in q:
        arr = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
        sharp = np.asarray(Image.fromarray(arr).filter(flt))
        out.append(sharp[None] if sharp.ndim == 2 else sharp.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out)).to(images01.device, images01.dtype) / 255


def ms_filter(images01: torch.Tensor, mode: str, magnitude: float) -> torch.Tensor:
    """Any of EOE's multiscale filters (``lpf``, ``hpf``, ``blur``, ``sharpen``) on images in pixel units."""
    if mode in FREQUENCY_MODES:
        return fourier_filter(images01, mode, int(magnitude))
    if mode == "blur":
        return gaussian_blur(images01, magnitude)
    if mode == "sharpen":
        return unsharp_mask(images01, magnitude)
    raise ConfigError(f"ms_mode.mode: expected one of {', '.join(MODES)}, got {mode!r}")


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
            raise ConfigError(f"{where}: expected a mapping {{mode: lpf|hpf|blur|sharpen, magnitude: E, parts: [...]}}, "
                              f"got {spec!r}")
        unknown = sorted(set(spec) - {"mode", "magnitude", "parts"})
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown} (known: mode, magnitude, parts)")
        mode = spec.get("mode", "lpf")
        check_value(f"{where}.mode", mode, Mode)
        e = spec.get("magnitude", 14)
        check_value(f"{where}.magnitude", e, NonNegativeInt)
        if mode in FREQUENCY_MODES and e > image_size // 2:
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
    pixel units, :func:`ms_filter`, normalised again (EOE filters before its Normalize; this is the
    same up to float rounding)."""

    def __init__(self, pixels: PixelSpace, mode: str, magnitude: int):
        self.pixels, self.mode, self.magnitude = pixels, mode, magnitude

    def __call__(self, x: torch.Tensor, generator=None, labels=None) -> torch.Tensor:
        if self.magnitude == 0:
            return x
        single = x.ndim == 3
        out = self.pixels.from_unit(ms_filter(self.pixels.to_unit(x[None] if single else x), self.mode, self.magnitude))
        return out[0] if single else out

    def __repr__(self) -> str:
        return f"FourierTransform({self.mode}, magnitude={self.magnitude})"


@OUTLIER_SOURCES.register("fourier_filter")
class FourierFiltered(OutlierSource):
    """Wraps an image source (``source``: a OUTLIER_SOURCES mapping, default ``oe_images``) and filters
    its images with :func:`ms_filter` (``mode`` lpf/hpf/blur/sharpen, ``magnitude`` e), in pixel space before
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
        if self.mode in FREQUENCY_MODES and self.magnitude > size // 2:
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
        return self.pixels.from_unit(ms_filter(raw, self.mode, self.magnitude))

    def describe(self) -> str:
        return f"fourier_filter {self.mode} e={self.magnitude} of [{self.inner.describe()}]"

    def state_dict(self) -> dict:
        return {"inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state.get("inner", {}))
