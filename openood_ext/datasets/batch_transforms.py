"""Batched augmentation on the device: every op acts on a whole float batch ``[B, C, H, W]`` (pixel values in
[0, 1] until normalisation) with per-sample random parameters drawn from a ``torch.Generator``.

The per-image path (:mod:`.transforms`) draws its parameters from torch's global RNG inside torchvision;
here every op draws from the generator it is given, so a fixed seed gives identical batches on rerun, and
the generator's state, saved with the training state, gives identical batches after resume. Parameters are
drawn on the generator's device (a CUDA generator keeps the draws on the GPU) and then moved to the batch.

Each random op draws its parameters from the same distribution as its torchvision counterpart:

=====================  ======================================================================================
op                     torchvision counterpart and what differs
=====================  ======================================================================================
:class:`PadCrop`       ``RandomCrop(size, padding)``: zero padding, offsets uniform over 0..H+2p-size; exact.
:class:`HFlip`         ``RandomHorizontalFlip(p)``; exact.
:class:`ColorJitter`   ``ColorJitter(b, c, s, h)``: factors uniform in [max(0, 1-b), 1+b] (hue in [-h, h]),
                       the four adjustments in a uniformly random order *per sample* (torchvision draws one
                       order per call, i.e. per image in a per-image pipeline: the same distribution). The
                       adjustments follow torchvision's tensor kernels (grey = 0.2989 R + 0.587 G + 0.114 B,
                       contrast about the mean grey level, hue in HSV), with the PIL path's 8-bit levels
                       between them (``eight_bit``: brightness and contrast equal PIL's, saturation within
                       1/255); PIL's 8-bit HSV round trip for hue is not reproduced (a few 1/255).
:class:`GaussianNoise` EOE's ``x + std * randn_like(x)``; exact in distribution.
:class:`Rotate`        ``RandomRotation(degrees)``: angle uniform in [-d, d], counter-clockwise, about the
                       centre, nearest neighbour, zero fill, same size (sampled with ``grid_sample``; PIL's
                       resampling grid may differ at a few pixel borders).
:class:`ResizedCrop`   ``RandomResizedCrop(size, scale, ratio)``: torchvision's 10-try rejection sampling of
                       area and log-aspect ratio and its centre-crop fallback, vectorised; bilinear
                       resampling without antialiasing (PIL antialiases when it shrinks).
:class:`Grayscale`     ``Grayscale(n)``: the same weights; 1 -> 3 channels repeats the grey channel.
:class:`Normalize`     ``Normalize(mean, std)``, or per-class statistics indexed by the batch's labels.
:class:`LocalContrast` FCDD's local contrast normalisation per sample (x - mean) / mean|x - mean| (``l1``) or
                       / std (``l2``), over all channels and pixels.
=====================  ======================================================================================

kornia.augmentation has most of these, but is not used: its parameters come from
``torch.distributions`` samplers on torch's global RNG (no per-call generator, so no resumable stream of
one's own), and its torchvision-compatible ColorJitter draws one order of the four adjustments for the
whole batch (``order``, shape (4,), in ``kornia/augmentation/random_generator/_2d/color_jitter.py``), not
one per image as a per-image pipeline does. The ops are a few lines each here instead.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from . import cpu_loops

GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


def _rand(shape: Sequence[int], g: torch.Generator, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) draws from ``g`` (on ``g``'s device), moved to ``device``."""
    return torch.rand(*shape, generator=g, device=g.device).to(device)


def _randint(high: torch.Tensor | int, shape: Sequence[int], g: torch.Generator, device: torch.device) -> torch.Tensor:
    """Integers uniform over 0..high-1 (``high`` may be a tensor of per-sample bounds)."""
    return (_rand(shape, g, device) * torch.as_tensor(high, device=device)).floor().long()


def uniform(lo: float, hi: float, n: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * _rand((n,), g, device)


def grey(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 1, H, W] with torchvision's weights."""
    r, gr, b = x.unbind(1)
    return (GREY_WEIGHTS[0] * r + GREY_WEIGHTS[1] * gr + GREY_WEIGHTS[2] * b).unsqueeze(1)


class PadCrop:
    """Zero-pad by ``padding`` and crop ``size`` x ``size`` at a per-sample uniform offset."""

    exact_on_uint8 = True  # moves pixels only: may run before the conversion to float

    def __init__(self, size: int, padding: int = 4):
        self.size, self.padding = int(size), int(padding)

    def offsets(self, n: int, h: int, w: int, g: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
        p, s = self.padding, self.size
        if h + 2 * p < s or w + 2 * p < s:
            raise ConfigError(f"random_crop: crop {s} is larger than the padded image {h + 2 * p}x{w + 2 * p}")
        return _randint(h + 2 * p - s + 1, (n,), g, device), _randint(w + 2 * p - s + 1, (n,), g, device)

    def __call__(self, x, g, labels=None):
        n, c, h, w = x.shape
        i, j = self.offsets(n, h, w, g, x.device)
        p, s = self.padding, self.size
        if x.device.type == "cpu" and cpu_loops.available():  # one compiled copy of the kept rows
            return cpu_loops.pad_crop(x, i, j, s, p)
        padded = F.pad(x, (p,) * 4) if p else x.contiguous()
        height, width = h + 2 * p, w + 2 * p
        # every run of s consecutive values of the padded batch, as a view; the crop is s of them per channel,
        # one per output row (one index read per row instead of one per pixel, as a gather would take)
        runs = padded.view(-1).unfold(0, s, 1)
        ar = torch.arange(s, device=x.device)
        plane = torch.arange(n * c, device=x.device).view(n, c, 1) * (height * width)
        start = plane + ((i[:, None] + ar) * width + j[:, None])[:, None, :]
        return runs.index_select(0, start.view(-1)).view(n, c, s, s)


class HFlip:
    """Mirror each sample left-right with probability ``p``."""

    exact_on_uint8 = True
    permutes_pixels = True  # commutes with a pixelwise op (ColorJitter): the pipeline may run it first

    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def __call__(self, x, g, labels=None):
        flip = _rand((len(x),), g, x.device) < self.p
        return torch.where(flip[:, None, None, None], x.flip(-1), x)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp(0, 1)


def _truncate8(x: torch.Tensor) -> torch.Tensor:
    """Each value cast to its 8-bit level, as PIL's ``Image.blend`` stores its float result (the 1e-3 of a
    level absorbs the float error of ``k / 255`` times a factor)."""
    return x.mul(255).add_(1e-3).floor_().div_(255)


def _nearest8(x: torch.Tensor) -> torch.Tensor:
    return x.mul(255).add_(0.5).floor_().div_(255)


#: hue channel offsets n of c_n = V - C * clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6, for R, G, B
_HUE_OFFSETS = (5.0, 3.0, 1.0)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of an RGB batch by ``shift`` (fractions of a turn, per sample), keeping S and V:
    torchvision's ``adjust_hue`` (RGB -> HSV, h + shift mod 1, HSV -> RGB), with hue in sixths of a turn
    and the closed-form HSV -> RGB ``c_n = V - (V - min) * clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6``
    (the three channels in one pass over a [B, 3, H, W] k)."""
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    r, g, b = x.unbind(1)
    chroma = maxc - minc
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    h = torch.where(maxc == r, (g - b) / safe, torch.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = torch.where(chroma > 0, h, torch.zeros_like(h)).add_(6.0 * shift.view(-1, 1, 1))
    k = torch.remainder(h.unsqueeze(1) + x.new_tensor(_HUE_OFFSETS).view(1, 3, 1, 1), 6.0)
    k = torch.minimum(k, 4.0 - k).clamp_(0, 1)
    return maxc.unsqueeze(1) - chroma.unsqueeze(1) * k


class ColorJitter:
    """Brightness, contrast, saturation and hue, each factor drawn per sample, applied in a per-sample
    random order (see the module table). 1-channel batches: saturation and hue do nothing (as torchvision).

    ``eight_bit`` (default) keeps what the PIL path's 8-bit images do between the adjustments: grey levels
    (the saturation blend's target, contrast's mean) are whole 8-bit levels, a blend's result is truncated
    to its level (PIL's ``Image.blend``), the hue rotation's rounded to the nearest. For the same factors
    brightness and contrast then equal PIL's exactly and saturation to one level (PIL's integer grey
    weights), where the float result sits about half a level above PIL's after each blend. Not reproduced: PIL
    rotates hue on an 8-bit HSV image with the shift truncated to whole 1/255 turns (so a shift under
    1/255 turn leaves the hue as it is, and the HSV round trip alone moves colours by up to a few levels);
    here the shift is the drawn one, as torchvision's tensor kernel.

    On the CPU, with numba, the adjustments run as one compiled loop (:mod:`.cpu_loops`, 15-20x less
    time); elsewhere as the tensor kernels below (equal to float rounding)."""

    pixelwise = True  # each output pixel: a function of its own value and of permutation-invariant statistics
    takes_uint8 = True  # a uint8 batch is converted as ToTensor (/ 255) first: by the compiled loop as it copies

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0,
                 eight_bit: bool = True):
        if not 0 <= hue <= 0.5:
            raise ConfigError(f"color_jitter: hue must be in [0, 0.5], got {hue}")
        self.ranges = [(max(0.0, 1 - v), 1 + v) if v else None for v in (brightness, contrast, saturation)]
        self.ranges.append((-hue, hue) if hue else None)
        self.eight_bit = bool(eight_bit)

    def params(self, n: int, g: torch.Generator, device) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        order = _rand((n, 4), g, device).argsort(1)  # a uniformly random permutation per sample
        factors = [None if r is None else uniform(r[0], r[1], n, g, device) for r in self.ranges]
        return order, factors

    @staticmethod
    def adjust(op: int, x: torch.Tensor, f: torch.Tensor, eight_bit: bool = False) -> torch.Tensor:
        rgb = x.shape[1] == 3
        if op >= 2 and not rgb:
            return x
        if op == 3:
            out = _shift_hue(x, f)
            return _nearest8(out) if eight_bit else out
        if op == 0:
            out = (x * f.view(-1, 1, 1, 1)).clamp_(0, 1)
        elif op == 1:
            mean = (grey(x) if rgb else x).mean(dim=(1, 2, 3), keepdim=True)
            out = _blend(x, _nearest8(mean) if eight_bit else mean, f)
        else:
            out = _blend(x, _nearest8(grey(x)) if eight_bit else grey(x), f)
        return _truncate8(out) if eight_bit else out

    def __call__(self, x, g, labels=None, path: str = "auto"):
        """``path``: ``compiled`` (the numba loop, CPU float32 only), ``masked`` (each adjustment on the
        whole batch, kept where the sample's order says so: no host sync, four times the arithmetic) or
        ``subset`` (each adjustment on the samples that need it at that position); ``auto``: compiled on
        the CPU when numba imports, masked on a GPU, else subset. The results are equal (to float rounding)."""
        order, factors = self.params(len(x), g, x.device)
        if path == "auto":
            compiled = x.device.type == "cpu" and x.dtype in (torch.float32, torch.uint8) and cpu_loops.available()
            path = "compiled" if compiled else "masked" if x.is_cuda else "subset"
        if path == "compiled":
            return cpu_loops.jitter(x, order, factors, self.eight_bit)
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.clone()
        for slot in range(4):
            for op, f in enumerate(factors):
                if f is None:
                    continue
                take = order[:, slot] == op
                if path == "masked":
                    x = torch.where(take[:, None, None, None], self.adjust(op, x, f, self.eight_bit), x)
                    continue
                idx = take.nonzero().squeeze(1)
                if len(idx):
                    x[idx] = self.adjust(op, x[idx], f[idx], self.eight_bit)
        return x


class GaussianNoise:
    """x + std * N(0, 1), per pixel (EOE's CIFAR-10 augmentation; on [0, 1] values, before Normalize)."""

    def __init__(self, std: float):
        self.std = float(std)

    def __call__(self, x, g, labels=None):
        noise = torch.randn(x.shape, generator=g, device=g.device).to(x.device)
        return noise.mul_(self.std).add_(x)  # x + std * noise, in the noise's buffer


def _affine_sample(x: torch.Tensor, theta: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    grid = F.affine_grid(theta.to(x.dtype), [len(x), x.shape[1], *size], align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


class Rotate:
    """Rotate each sample counter-clockwise by an angle uniform in [-degrees, degrees] (zero fill)."""

    def __init__(self, degrees: float, mode: str = "nearest"):
        self.degrees, self.mode = float(degrees), mode

    def __call__(self, x, g, labels=None):
        n, _, h, w = x.shape
        a = torch.deg2rad(uniform(-self.degrees, self.degrees, n, g, x.device))
        cos, sin = torch.cos(a), torch.sin(a)
        # output (u, v) samples input R(-a) (u, v) in pixel units; normalised coordinates scale by w/2, h/2
        theta = torch.stack((torch.stack((cos, -sin * h / w, torch.zeros_like(a)), 1),
                             torch.stack((sin * w / h, cos, torch.zeros_like(a)), 1)), 1)
        return _affine_sample(x, theta, (h, w), self.mode)


class ResizedCrop:
    """torchvision's RandomResizedCrop parameters per sample, the crop resized to ``size`` (``mode``:
    bilinear, nearest or bicubic, as ``grid_sample``)."""

    def __init__(self, size: int, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), tries: int = 10, mode: str = "bilinear"):
        self.size, self.scale, self.ratio, self.tries = int(size), tuple(scale), tuple(ratio), int(tries)
        self.mode = mode

    def boxes(self, n: int, height: int, width: int, g: torch.Generator, device) -> torch.Tensor:
        """[n, 4] integer boxes (top, left, h, w), torchvision's ``get_params`` vectorised."""
        area = height * width
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * _rand((n, self.tries), g, device))
        aspect = torch.exp(lo + (hi - lo) * _rand((n, self.tries), g, device))
        w = torch.round(torch.sqrt(target * aspect)).long()
        h = torch.round(torch.sqrt(target / aspect)).long()
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1, device=device))
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            fw, fh = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            fh, fw = height, int(round(height * max(self.ratio)))
        else:
            fw, fh = width, height
        found = first >= 0
        pick = first.clamp(min=0)[:, None]
        bw = torch.where(found, w.gather(1, pick).squeeze(1), torch.full_like(first, fw))
        bh = torch.where(found, h.gather(1, pick).squeeze(1), torch.full_like(first, fh))
        top = torch.where(found, _randint(height - bh + 1, (n,), g, device), (height - bh) // 2)
        left = torch.where(found, _randint(width - bw + 1, (n,), g, device), (width - bw) // 2)
        return torch.stack((top, left, bh, bw), 1)

    def __call__(self, x, g, labels=None):
        n, _, height, width = x.shape
        top, left, bh, bw = self.boxes(n, height, width, g, x.device).to(x.dtype).unbind(1)
        # the box's centre and half-extent in normalised coordinates (align_corners=False)
        cx, cy = (2 * left + bw) / width - 1, (2 * top + bh) / height - 1
        zero = torch.zeros_like(cx)
        theta = torch.stack((torch.stack((bw / width, zero, cx), 1), torch.stack((zero, bh / height, cy), 1)), 1)
        return _affine_sample(x, theta, (self.size, self.size), self.mode)


class Grayscale:
    """To ``channels`` channels: RGB -> grey with torchvision's weights (repeated when 3), grey -> repeated."""

    def __init__(self, channels: int = 1):
        self.channels = int(channels)

    def __call__(self, x, g=None, labels=None):
        y = grey(x) if x.shape[1] == 3 else x
        return y.expand(-1, self.channels, -1, -1).contiguous() if self.channels == 3 else y


class Normalize:
    """(x - mean) / std per channel; with ``[num_classes, C]`` statistics, each sample uses its label's row."""

    def __init__(self, mean, std):
        self.mean, self.std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)

    def __call__(self, x, g=None, labels=None, inplace: bool = False):
        """``inplace``: in ``x``'s buffer (a pipeline's own batch): the same values, no new allocations."""
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        if mean.ndim == 2:
            if labels is None:
                raise ValueError("per-class normalisation needs the batch's labels")
            mean, std = mean[labels][:, :, None, None], std[labels][:, :, None, None]
        else:
            mean, std = mean[:, None, None], std[:, None, None]
        return x.sub_(mean).div_(std) if inplace else (x - mean) / std


class LocalContrast:
    """FCDD's local contrast normalisation per sample over all channels and pixels."""

    def __init__(self, norm: str = "l1"):
        if norm not in ("l1", "l2"):
            raise ConfigError(f"lcn: expected l1 or l2, got {norm!r}")
        self.norm = norm

    def __call__(self, x, g=None, labels=None):
        centred = x - x.mean(dim=(1, 2, 3), keepdim=True)
        scale = centred.abs().mean(dim=(1, 2, 3), keepdim=True) if self.norm == "l1" \
            else centred.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
        return centred / scale.clamp_min(1e-12)


class RandomApply:
    """``op`` on each sample with probability ``p`` (torchvision's ``RandomApply([op], p)`` and, with
    :class:`Grayscale` (3 channels), ``RandomGrayscale(p)``): computed on the whole batch, kept where drawn."""

    def __init__(self, op, p: float):
        self.op, self.p = op, float(p)

    def __call__(self, x, g, labels=None):
        take = _rand((len(x),), g, x.device) < self.p
        return torch.where(take[:, None, None, None], self.op(x, g, labels), x)


class MultiView:
    """``views`` independent passes of ``pipeline`` over one uint8 batch -> [B, views, C, H, W] (the
    batched form of a per-image multi-view transform, e.g. NPOS's two augmented views)."""

    def __init__(self, pipeline: "BatchPipeline", views: int = 2):
        self.pipeline, self.views = pipeline, int(views)

    def __call__(self, images, g, labels=None):
        return torch.stack([self.pipeline(images, g, labels) for _ in range(self.views)], 1)

    def __repr__(self) -> str:
        return f"MultiView({self.pipeline!r}, views={self.views})"


class Then:
    """``first`` (a uint8 -> float pipeline), then ``ops`` on its float output."""

    def __init__(self, first, ops: Sequence):
        self.first, self.ops = first, list(ops)

    def __call__(self, images, g, labels=None):
        x = self.first(images, g, labels)
        for op in self.ops:
            x = op(x, g, labels)
        return x

    def __repr__(self) -> str:
        return f"{self.first!r} then {', '.join(type(op).__name__ for op in self.ops)}"


class BatchPipeline:
    """uint8 batch [B, C, H, W] -> float batch: ``/ 255`` (as ``ToTensor``), then ``ops`` in order.

    Leading ops that only move pixels (``exact_on_uint8``: crop, flip) run on the uint8 batch, before
    the conversion (the same result, a quarter of the memory traffic); a flip (``permutes_pixels``) after
    a colour jitter (``pixelwise``) runs before it, since the two commute (an equal result up to the
    float rounding of contrast's mean, from different draws of the same distributions), and so on uint8
    too. The conversion and a following
    :class:`Normalize` are the per-image path's own float operations in the same order (``/ 255``, then
    ``- mean``, ``/ std``), so without augmentation a batch is bit-identical to the PIL path's and a
    training run gives the same numbers on either backend."""

    def __init__(self, ops: Sequence):
        self.ops = list(ops)
        run = list(self.ops)
        for k in range(1, len(run)):
            j = k
            while j > 0 and getattr(run[j], "permutes_pixels", False) and getattr(run[j - 1], "pixelwise", False):
                run[j - 1], run[j] = run[j], run[j - 1]
                j -= 1
        lead = 0
        while lead < len(run) and getattr(run[lead], "exact_on_uint8", False):
            lead += 1
        self.lead, self.rest = run[:lead], run[lead:]

    def __call__(self, images: torch.Tensor, g: torch.Generator, labels: torch.Tensor | None = None) -> torch.Tensor:
        if images.dtype != torch.uint8:
            x = images
            for op in self.lead + self.rest:
                x = op(x, g, labels)
            return x
        for op in self.lead:
            images = op(images, g, labels)
        rest = self.rest
        if rest and getattr(rest[0], "takes_uint8", False):
            x, rest = rest[0](images, g, labels), rest[1:]
        else:
            x = images.float().div_(255)
        for op in rest:  # x is this call's own batch from here on: normalised in place
            x = op(x, g, labels, inplace=True) if isinstance(op, Normalize) else op(x, g, labels)
        return x

    def __repr__(self) -> str:
        return f"BatchPipeline({', '.join(type(op).__name__ for op in self.ops)})"
