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
from .pixels import PixelSpace
from .registry import OUTLIER_SOURCES


@dataclass
class Blobs:
    """Blob parameters of one component for one image: centres (x, y), sides, angles (deg), colours [n, C]."""

    cx: torch.Tensor
    cy: torch.Tensor
    side: torch.Tensor
    angle: torch.Tensor
    colour: torch.Tensor


def draw_blobs(h: int, w: int, channels: int, prob: float, side_range: tuple[int, int],
               fill: float | None, generator: torch.Generator) -> Blobs:
    """Blob centres with probability ``prob`` per pixel (at least one), sides uniform in
    ``side_range`` (inclusive), rotation U(-45, 45) degrees, colour per blob and channel uniform in
    {-256, ..., -1} (FCDD's ``randint(-256, 0)``) or the constant ``fill``."""
    n = max(int((torch.rand(h * w, generator=generator) < prob).sum().item()), 1)  # Binomial(HW, prob), >= 1
    cx = torch.randint(0, w, (n,), generator=generator)
    cy = torch.randint(0, h, (n,), generator=generator)
    side = torch.randint(side_range[0], side_range[1] + 1, (n,), generator=generator)
    angle = torch.rand(n, generator=generator) * 90 - 45
    colour = (torch.full((n, channels), float(fill)) if fill is not None
              else torch.randint(-256, 0, (n, channels), generator=generator).float())
    return Blobs(cx, cy, side, angle, colour)


def render_batch(blobs: list[Blobs], h: int, w: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Paint each image's blobs (later ones over earlier ones) into a [B, C, H, W] noise map, zero
    elsewhere, for the whole batch at once on ``device`` (the same pixels as :func:`render_blobs` per image):
    per pixel the last blob of its image that covers it wins."""
    counts = torch.tensor([len(b.side) for b in blobs])
    cx, cy, side, angle, colour = (torch.cat([getattr(b, f) for b in blobs]).to(device, non_blocking=True)
                                   for f in ("cx", "cy", "side", "angle", "colour"))
    image = torch.repeat_interleave(torch.arange(len(blobs)), counts).to(device, non_blocking=True)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device),
                            torch.arange(w, dtype=torch.float32, device=device), indexing="ij")
    rad = (angle * math.pi / 180)[:, None, None]
    dx, dy = xs[None] - cx[:, None, None], ys[None] - cy[:, None, None]
    u = dx * torch.cos(rad) + dy * torch.sin(rad)
    v = -dx * torch.sin(rad) + dy * torch.cos(rad)
    half = (side.float() / 2)[:, None, None]
    inside = ((u.abs() <= half) & (v.abs() <= half)).reshape(len(side), h * w)      # [N, HW]
    order = torch.arange(1, len(side) + 1, device=device)[:, None]                  # blobs in image order
    winner = torch.zeros(len(blobs), h * w, dtype=torch.long, device=device)        # 0: no blob
    winner.scatter_reduce_(0, image[:, None].expand(-1, h * w), inside * order, "amax")
    palette = torch.cat([colour.new_zeros(1, colour.shape[1]), colour])            # [N + 1, C]
    return palette[winner].permute(0, 2, 1).reshape(len(blobs), -1, h, w)


def render_blobs(blobs: Blobs, h: int, w: int) -> torch.Tensor:
    """Paint the blobs (later ones over earlier ones) into a [C, H, W] noise map, zero elsewhere."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    out = torch.zeros(blobs.colour.shape[1], h, w)
    rad = blobs.angle * math.pi / 180
    for i in range(len(blobs.side)):  # a handful of blobs per image
        dx, dy = xs - blobs.cx[i], ys - blobs.cy[i]
        u = dx * torch.cos(rad[i]) + dy * torch.sin(rad[i])
        v = -dx * torch.sin(rad[i]) + dy * torch.cos(rad[i])
        half = blobs.side[i].float() / 2
        inside = (u.abs() <= half) & (v.abs() <= half)
        out[:, inside] = blobs.colour[i].view(-1, 1)
    return out


def confetti_noise(shape: tuple[int, int, int, int], generator: torch.Generator, *, prob: float = 1.8e-5,
                   prob_dark: float = 1.2e-5, side_range: tuple[int, int] = (8, 54), blur_kernel: int = 25,
                   blur_sigma: float = 5.0, device: torch.device | str = "cpu") -> torch.Tensor:
    """Confetti noise [B, C, H, W] in raw pixel units (0..255 scale): a coloured component and an
    all-dark component (fill -255), each with at least one blob, summed and Gaussian-blurred. The blob
    parameters come from the CPU ``generator`` (the same noise on every device); painting and blurring
    run on ``device`` for the whole batch."""
    b, c, h, w = shape
    coloured, dark = [], []
    for _ in range(b):  # the draw order of the per-image loop: coloured then dark, image by image
        coloured.append(draw_blobs(h, w, c, prob, side_range, None, generator))
        dark.append(draw_blobs(h, w, c, prob_dark, side_range, -255.0, generator))
    noise = render_batch(coloured, h, w, device) + render_batch(dark, h, w, device)
    k = min(blur_kernel, 2 * (min(h, w) - 1) + 1)
    k -= (k % 2 == 0)
    return TF.gaussian_blur(noise, [k, k], [blur_sigma, blur_sigma]) if k >= 3 else noise


def apply_confetti(images255: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Add noise to images in 0..255 units and clamp; per image, use the negated noise instead when the
    change is below 0.025 on average (in 0..1 units) and the negation changes the image more (FCDD's rule).
    Returns (corrupted images, map [B, 1, H, W] of changed pixels as 0/1 floats)."""
    plus = (images255 + noise).clamp(0, 255)
    minus = (images255 - noise).clamp(0, 255)
    change_plus = (plus - images255).abs().flatten(1).mean(1) / 255
    change_minus = (minus - images255).abs().flatten(1).mean(1) / 255
    flip = (change_plus < 0.025) & (change_minus > change_plus)
    out = torch.where(flip.view(-1, 1, 1, 1), minus, plus)
    changed = ((out - images255).abs().amax(1, keepdim=True) > 0).float()
    return out, changed


@OUTLIER_SOURCES.register("confetti")
class Confetti(OutlierSource):
    """Confetti outliers, aligned with the ID batch (outlier i is made from ID image i).

    ``mode``: ``malformed_normal`` (the ID image plus confetti; FCDD's MVTec setting) or ``noise``
    (confetti on a black image). Blob parameters as FCDD: ``prob`` 1.8e-5 and ``prob_dark`` 1.2e-5 blob
    centres per pixel, ``side_range`` [8, 54] pixels, blur kernel 25 with sigma 5. Works in pixel units
    (the benchmark's normalisation is undone and redone). The changed-pixel maps of the last draw are in
    ``self.last_changed`` ([B, 1, H, W], 1 = changed) for ground-truth supervision. Seeded per
    (seed, epoch) (and the rank under torchrun), so resumed runs draw the same noise.
    """

    kind = "images"

    def __init__(self, mode: Literal["malformed_normal", "noise"] = "malformed_normal", prob: Probability = 1.8e-5,
                 prob_dark: Probability = 1.2e-5, side_range: Annotated[list[PositiveInt], Length(2, 2)] = (8, 54),
                 blur_kernel: int = 25, blur_sigma: float = 5.0):
        side_range = tuple(side_range)
        if side_range[0] > side_range[1]:
            raise ConfigError(f"trainer.outliers.side_range: expected [min, max] with 1 <= min <= max, got {list(side_range)}")
        self.mode, self.prob, self.prob_dark, self.side_range = mode, float(prob), float(prob_dark), side_range
        self.blur_kernel, self.blur_sigma = int(blur_kernel), float(blur_sigma)
        self.last_changed = None

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.pixels = PixelSpace(ctx.benchmark.preprocessor)
        self.generator = torch.Generator().manual_seed(ctx.seed + 7919 * int(getattr(ctx, "rank", 0)))

    def on_epoch_start(self, epoch: int) -> None:
        entropy = [self.ctx.seed, 0xC0F, epoch, *rank_key(self.ctx)]
        seed = np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]
        self.generator = torch.Generator().manual_seed(int(seed) % 2**62)

    def corrupt(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images [B, C, H, W] -> confetti outliers (normalised), on the images' device."""
        raw = self.pixels.to_unit(images.float()) * 255  # on the images' device: no copy to the host
        if self.mode == "noise":
            raw = torch.zeros_like(raw)
        noise = confetti_noise(tuple(raw.shape), self.generator, prob=self.prob, prob_dark=self.prob_dark,
                               side_range=self.side_range, blur_kernel=self.blur_kernel, blur_sigma=self.blur_sigma,
                               device=raw.device)
        out, self.last_changed = apply_confetti(raw, noise)
        return self.pixels.from_unit(out / 255)

    def draw(self, batch) -> torch.Tensor:
        return self.corrupt(batch.images)

    def describe(self) -> str:
        return f"confetti ({self.mode}, blob sides {self.side_range[0]}..{self.side_range[1]})"
