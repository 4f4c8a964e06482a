"""FCDD's confetti noise (Liznerski et al., ICLR 2021, ``datasets/noise.py``): random rotated squares of
random colour, blurred, added to an image. Used alone (synthetic anomalies) or to corrupt normal images
("malformed normal")."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import torch
import torchvision.transforms.functional as TF

from ..errors import ConfigError
from ..schema import Length, PositiveInt, Probability
from .base import OutlierSource, rank_key
from .supervisor import Supervisor
from .pixels import PixelSpace
from .registry import OUTLIER_SOURCES


@dataclass
class Blobs:
    """Blob parameters of one component for one image, in painting order: centres (x, y), sides,
    angles (deg, applied in centre order, see :func:`render_blobs`), colours [n, C]."""

    cx: torch.Tensor
    cy: torch.Tensor
    side: torch.Tensor
    angle: torch.Tensor
    colour: torch.Tensor


def draw_blobs(h: int, w: int, channels: int, prob: float, side_range: tuple[int, int],
               fill: float | None, generator: torch.Generator) -> Blobs:
    """FCDD's blob sampling (``confetti_noise``): every pixel is a blob centre with probability ``prob``;
    an image without a centre draws its whole mask again (``ensureblob``: the count is Binomial(HW, prob)
    *conditioned* on >= 1, not max(N, 1)); sides uniform in ``side_range`` (inclusive); one rotation
    U(-45, 45) degrees per blob; colour uniform in {-256, ..., -1} per channel, shared by all blobs of the
    same side (FCDD draws it per side group), or the constant ``fill``. Centres are in row-major order."""
    cy, cx = _bernoulli_centres(h, w, prob, generator)
    n = len(cy)
    n_sides = side_range[1] - side_range[0] + 1
    side = side_range[0] + (torch.rand(n, generator=generator) * n_sides).long().clamp(max=n_sides - 1)
    angle = torch.rand(n, generator=generator) * 90 - 45
    if fill is not None:
        colour = torch.full((n, channels), float(fill))
    else:
        colour = torch.zeros(n, channels)
        for value in torch.unique(side):  # ascending, as FCDD's loop over the shapes
            colour[side == value] = torch.randint(-256, 0, (channels,), generator=generator).float()
    return Blobs(cx, cy, side, angle, colour)


def _bernoulli_centres(h: int, w: int, prob: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The non-zero pixels (rows, columns; row-major order) of an H x W Bernoulli(``prob``) mask, drawn
    again while empty. Same law as thresholding H W uniforms, without them: the count is
    Binomial(HW, prob) by inversion, the positions a uniform subset of that size."""
    from scipy.stats import binom
    hw = h * w
    if prob <= 0:  # FCDD would loop forever; one blob, as it ensures at least one
        n = 1
    else:
        n = 0
        while n == 0:
            n = int(binom.ppf(float(torch.rand((), generator=generator, dtype=torch.float64)), hw, prob))
    picked: set[int] = set()
    while len(picked) < n:
        picked.update(torch.randint(0, hw, (n - len(picked),), generator=generator).tolist())
    flat = torch.tensor(sorted(picked))
    return flat // w, flat % w


def _extent(side: int) -> range:
    """Offsets of a square of ``side`` pixels around its centre pixel (FCDD: even sides reach further right)."""
    return range(-(side // 2) if side % 2 else -(side // 2) + 1, side // 2 + 1)


def rotate_window(win: torch.Tensor, angle: float, centre_xy: tuple[float, float]) -> torch.Tensor:
    """skimage's ``rotate(win, angle, order=0, cval=0, center=centre_xy)`` of a [h, w, C] window:
    counter-clockwise by ``angle`` degrees about ``centre_xy`` = (column, row); output pixel o takes the
    input pixel nearest to R(angle) (o - c) + c, zero outside."""
    h, w = win.shape[:2]
    rad = math.radians(angle)
    cos, sin = math.cos(rad), math.sin(rad)
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")
    x, y = cols - centre_xy[0], rows - centre_xy[1]
    src_c = torch.round(cos * x - sin * y + centre_xy[0]).long()
    src_r = torch.round(sin * x + cos * y + centre_xy[1]).long()
    inside = (src_c >= 0) & (src_c < w) & (src_r >= 0) & (src_r < h)
    out = torch.zeros_like(win)
    out[inside] = win[src_r[inside], src_c[inside]]
    return out


def render_blobs(blobs: Blobs, h: int, w: int) -> torch.Tensor:
    """Paint the blobs into a [C, H, W] noise map as FCDD does: axis-aligned squares grouped by side
    (ascending; later groups over earlier ones), pixel indices clamped to the image (a blob crossing the
    border smears onto the border row/column); then, blob by blob in centre order, the window
    [c - floor(.75 s), c + ceil(.75 s)) (cut at H - 1 / W - 1) is rotated by the blob's angle with
    nearest-neighbour sampling (:func:`rotate_window`, zeros coming in from outside the window)."""
    c = blobs.colour.shape[1]
    out = torch.zeros(h, w, c)
    order = sorted(range(len(blobs.side)), key=lambda i: int(blobs.side[i]))  # stable: centre order in a group
    for i in order:
        ext = _extent(int(blobs.side[i]))
        rows = (int(blobs.cy[i]) + torch.arange(ext.start, ext.stop)).clamp(0, h - 1)
        cols = (int(blobs.cx[i]) + torch.arange(ext.start, ext.stop)).clamp(0, w - 1)
        out[rows.view(-1, 1), cols.view(1, -1)] = blobs.colour[i]
    for i in range(len(blobs.side)):
        s, cy, cx = int(blobs.side[i]), int(blobs.cy[i]), int(blobs.cx[i])
        r0, r1 = max(cy - math.floor(0.75 * s), 0), min(cy + math.ceil(0.75 * s), h - 1)
        c0, c1 = max(cx - math.floor(0.75 * s), 0), min(cx + math.ceil(0.75 * s), w - 1)
        if r1 <= r0 or c1 <= c0 or float(blobs.angle[i]) == 0:  # nothing to rotate
            continue
        # FCDD passes (row, column) offsets where skimage expects (column, row): kept, as published
        out[r0:r1, c0:c1] = rotate_window(out[r0:r1, c0:c1], float(blobs.angle[i]), (cy - r0, cx - c0))
    return out.permute(2, 0, 1)


def confetti_noise(shape: tuple[int, int, int, int], generator: torch.Generator, *, prob: float = 1.8e-5,
                   prob_dark: float = 1.2e-5, side_range: tuple[int, int] = (8, 54), blur_kernel: int = 25,
                   blur_sigma: float = 5.0) -> torch.Tensor:
    """Confetti noise [B, C, H, W] in raw pixel units (0..255 scale, integer values): a coloured and an
    all-dark component (fill -255), each with at least one blob, summed, Gaussian-blurred (normalised
    kernel, reflected borders, as kornia's ``gaussian_blur2d``) and truncated to integers (FCDD's ``.int()``)."""
    b, c, h, w = shape
    maps = []
    for _ in range(b):
        coloured = render_blobs(draw_blobs(h, w, c, prob, side_range, None, generator), h, w)
        dark = render_blobs(draw_blobs(h, w, c, prob_dark, side_range, -255.0, generator), h, w)
        maps.append(coloured + dark)
    noise = torch.stack(maps)
    k = min(blur_kernel, 2 * (min(h, w) - 1) + 1)
    k -= (k % 2 == 0)
    return (TF.gaussian_blur(noise, [k, k], [blur_sigma, blur_sigma]) if k >= 3 else noise).trunc()


def apply_confetti(images255: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FCDD's ``malformed_normal``: add noise to images in 0..255 units and clamp. Per image, the negated
    noise is used instead when |mean signed change| (in 0..255 units) is below 0.025 and the negated noise
    changes the image more (FCDD's rule: since the confetti noise is mostly negative, this practically
    never brightens an image). Returns (corrupted images, map [B, 1, H, W] of changed pixels, 0/1 floats)."""
    plus = (images255 + noise).clamp(0, 255)
    minus = (images255 - noise).clamp(0, 255)
    d = (plus - images255).flatten(1).mean(1).abs()
    di = (minus - images255).flatten(1).mean(1).abs()
    flip = (d < 0.025) & (di > d)
    out = torch.where(flip.view(-1, 1, 1, 1), minus, plus)
    changed = ((out - images255).abs().amax(1, keepdim=True) > 0).float()
    return out, changed


def apply_offline(images255: torch.Tensor, noise: torch.Tensor,
                  brightness: float = 0.11 * 255) -> tuple[torch.Tensor, torch.Tensor]:
    """FCDD's *offline* ``malformed_normal`` (``offline_supervisor.malformed_normal``), another rule than
    the online one: the noise (truncated to integers) is negated at every pixel whose channel sum exceeds
    ``brightness`` x C, then added and clamped to [0, 255]. Returns (corrupted images, map [B, 1, H, W] of
    changed pixels)."""
    noise = noise.trunc()
    bright = images255.sum(1, keepdim=True) > brightness * images255.shape[1]
    out = (images255 + torch.where(bright, -noise, noise)).clamp(0, 255)
    changed = ((out - images255).abs().amax(1, keepdim=True) > 0).float()
    return out, changed


def fit_noise(noise: torch.Tensor, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Noise drawn at FCDD's stored size -> the image size, per image as FCDD's MVTec training transform
    moves it with its image: with p = 1/2 a random crop, else nearest-neighbour resizing."""
    h, w = size
    if noise.shape[-2:] == (h, w):
        return noise
    out = []
    for n in noise:
        if bool(torch.rand((), generator=generator) < 0.5) and n.shape[-2] >= h and n.shape[-1] >= w:
            top = int(torch.randint(0, n.shape[-2] - h + 1, (), generator=generator))
            left = int(torch.randint(0, n.shape[-1] - w + 1, (), generator=generator))
            out.append(n[:, top:top + h, left:left + w])
        else:
            out.append(torch.nn.functional.interpolate(n[None], (h, w), mode="nearest")[0])
    return torch.stack(out)


@OUTLIER_SOURCES.register("confetti")
class Confetti(OutlierSource):
    """Confetti outliers, aligned with the ID batch (outlier i is made from ID image i).

    ``mode``: ``malformed_normal`` (the ID image plus confetti; FCDD's MVTec setting) or ``noise``
    (confetti on a black image). Blob parameters as FCDD: ``prob`` 1.8e-5 and ``prob_dark`` 1.2e-5 blob
    centres per pixel, ``side_range`` [8, 54] pixels, blur kernel 25 with sigma 5. Works in pixel units
    (the benchmark's normalisation is undone and redone). The changed-pixel maps of the last draw are in
    ``self.last_changed`` ([B, 1, H, W], 1 = changed) for ground-truth supervision. Seeded per
    (seed, epoch) (and the rank under torchrun), so resumed runs draw the same noise. The blobs are drawn
    and painted on the CPU, blob by blob as FCDD paints them, and the outliers handed back on the images'
    device.

    ``draw_size: N`` draws the noise at N x N and moves it to the image size as FCDD's MVTec training
    transform moves an image stored at 240 px (:func:`fit_noise`; the MVTec recipe sets 240).

    ``supervisor``: where the confetti is made. ``batch`` (default): by the engine, on the transformed
    training batch (after crop, jitter, noise; normalisation undone and redone). ``online``: FCDD's
    ``OnlineSupervisor`` position, on the stored image before the training transform (so the crop/resize,
    the colour jitter and the noise of FCDD's ``lcnaug1`` act on the anomaly too; the MVTec and CIFAR-10
    recipes; on the tensor data path it is made on the raw decoded batch before the batched augmentation);
    ``offline``: FCDD's offline supervision, a fixed set of N anomalies, one per training image, made once
    (:mod:`.supervisor`). With ``online``/``offline`` the noise is drawn at the stored size and
    ``draw_size`` is not used.

    ``noise`` mode: FCDD clamps the (mostly negative) confetti noise to [0, 255], which gives black images
    (a published defect: the anomalies carry no blob). By default the blobs are drawn bright (|noise| on
    black); ``published_noise_clamp: true`` reproduces the black images.
    """

    kind = "images"

    def __init__(self, mode: Literal["malformed_normal", "noise"] = "malformed_normal", prob: Probability = 1.8e-5,
                 prob_dark: Probability = 1.2e-5, side_range: Annotated[list[PositiveInt], Length(2, 2)] = (8, 54),
                 blur_kernel: int = 25, blur_sigma: float = 5.0, draw_size: PositiveInt | None = None,
                 published_noise_clamp: bool = False, supervisor: Supervisor = "batch"):
        side_range = tuple(side_range)
        if side_range[0] > side_range[1]:
            raise ConfigError(f"trainer.outliers.side_range: expected [min, max] with 1 <= min <= max, got {list(side_range)}")
        self.mode, self.prob, self.prob_dark, self.side_range = mode, float(prob), float(prob_dark), side_range
        self.blur_kernel, self.blur_sigma = int(blur_kernel), float(blur_sigma)
        self.draw_size, self.published_noise_clamp = draw_size, bool(published_noise_clamp)
        self.supervisor = supervisor
        self.last_changed = None

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.pixels = PixelSpace(ctx.benchmark.preprocessor)
        self.generator = torch.Generator().manual_seed(ctx.seed + 7919 * int(getattr(ctx, "rank", 0)))

    def on_epoch_start(self, epoch: int) -> None:
        entropy = [self.ctx.seed, 0xC0F, epoch, *rank_key(self.ctx)]
        seed = np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]
        self.generator = torch.Generator().manual_seed(int(seed) % 2**62)

    def noise255(self, shape: tuple[int, int, int, int], generator: torch.Generator | None) -> torch.Tensor:
        """Confetti noise [B, C, H, W] with this source's blob parameters (0..255 units)."""
        return confetti_noise(shape, generator, prob=self.prob, prob_dark=self.prob_dark, side_range=self.side_range,
                              blur_kernel=self.blur_kernel, blur_sigma=self.blur_sigma)

    def corrupt255(self, raw: torch.Tensor, generator: torch.Generator | None, draw_size: int | None = None,
                   offline: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, C, H, W] in 0..255 -> (confetti outliers in 0..255, changed-pixel maps [B, 1, H, W]).
        ``draw_size``: draw the noise at that size and fit it to H x W (:func:`fit_noise`); ``generator``
        None draws from the global torch RNG (a loader worker's, for dataset-side supervision);
        ``offline``: FCDD's offline malformed-normal rule (:func:`apply_offline`)."""
        b, c, h, w = raw.shape
        noise = self.noise255((b, c, draw_size, draw_size) if draw_size else (b, c, h, w), generator)
        noise = fit_noise(noise, (h, w), generator)
        if self.mode == "noise":  # FCDD's `noise` supervision: the noise alone replaces the image
            out = noise.clamp(0, 255) if self.published_noise_clamp else noise.abs().clamp(0, 255)
            return out, (out.amax(1, keepdim=True) > 0).float()
        return apply_offline(raw, noise) if offline else apply_confetti(raw, noise)

    def corrupt(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images [B, C, H, W] -> confetti outliers (normalised), on the images' device."""
        raw = self.pixels.to_unit(images.float().cpu()) * 255
        out, self.last_changed = self.corrupt255(raw, self.generator, self.draw_size)
        return self.pixels.from_unit(out / 255).to(images.device)

    def draw(self, batch) -> torch.Tensor:
        return self.corrupt(batch.images)

    def describe(self) -> str:
        where = "" if self.supervisor == "batch" else f", supervisor {self.supervisor}"
        return f"confetti ({self.mode}, blob sides {self.side_range[0]}..{self.side_range[1]}{where})"
