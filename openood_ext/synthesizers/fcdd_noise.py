"""FCDD's other synthetic anomalies (``datasets/noise_modes.py``), the ``noise_mode`` values besides
confetti and the OE sets, in raw pixel units (0..255) like FCDD:

* ``gaussian``: 64 N(0, 1) per pixel and channel;
* ``uniform``: U(0, 255) per pixel and channel;
* ``blob``: white 6x6 squares (255), a centre with probability 0.002 per pixel (mask drawn again when
  empty), not rotated, not blurred;
* ``solid``: one colour per image, each channel uniform in {0, ..., 255}.

With ``mode: noise`` the noise replaces the image, clamped to [0, 255] (FCDD's ``noise`` supervision);
with ``malformed_normal`` it is added to the ID image with FCDD's rule (:func:`~.confetti.apply_confetti`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from .confetti import apply_confetti, draw_blobs, render_blobs
from .base import OutlierSource
from .pixels import PixelSpace
from .registry import OUTLIER_SOURCES

NoiseMode = Literal["gaussian", "uniform", "blob", "solid"]


def fcdd_noise(kind: str, shape: tuple[int, int, int, int], generator: torch.Generator) -> torch.Tensor:
    """FCDD's ``generate_noise(kind, shape)`` [B, C, H, W], 0..255 units (unclamped for ``gaussian``)."""
    b, c, h, w = shape
    if kind == "gaussian":
        return torch.randn(shape, generator=generator) * 64
    if kind == "uniform":
        return torch.rand(shape, generator=generator) * 255
    if kind == "solid":
        return torch.randint(0, 256, (b, c, 1, 1), generator=generator).float().expand(shape).clone()
    if kind == "blob":
        maps = []
        for _ in range(b):
            blobs = draw_blobs(h, w, c, 0.002, (6, 6), 255.0, generator)
            blobs.angle.zero_()
            maps.append(render_blobs(blobs, h, w))
        return torch.stack(maps)
    raise ValueError(f"fcdd_noise: unknown kind {kind!r}")


@OUTLIER_SOURCES.register("fcdd_noise")
class FCDDNoise(OutlierSource):
    """FCDD's synthetic noise anomalies (see the module doc), aligned with the ID batch; seeded per
    (seed, epoch). ``kind``: gaussian | uniform | blob | solid; ``mode``: noise | malformed_normal."""

    kind = "images"

    def __init__(self, noise: NoiseMode = "gaussian", mode: Literal["noise", "malformed_normal"] = "noise"):
        self.noise, self.mode = noise, mode
        self.last_changed = None

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.pixels = PixelSpace(ctx.benchmark.preprocessor)
        self.generator = torch.Generator().manual_seed(ctx.seed)

    def on_epoch_start(self, epoch: int) -> None:
        seed = np.random.SeedSequence([self.ctx.seed, 0xF0D, epoch]).generate_state(1, np.uint64)[0]
        self.generator = torch.Generator().manual_seed(int(seed) % 2**62)

    def corrupt(self, images: torch.Tensor) -> torch.Tensor:
        raw = self.pixels.to_unit(images.float().cpu()) * 255
        noise = fcdd_noise(self.noise, tuple(raw.shape), self.generator)
        if self.mode == "noise":
            out = noise.clamp(0, 255).floor()  # FCDD: .clamp(0, 255).byte()
            self.last_changed = torch.ones(len(out), 1, *out.shape[-2:])
        else:
            out, self.last_changed = apply_confetti(raw, noise.trunc())
        return self.pixels.from_unit(out / 255).to(images.device)

    def draw(self, batch) -> torch.Tensor:
        return self.corrupt(batch.images)

    def describe(self) -> str:
        return f"fcdd_noise ({self.noise}, {self.mode})"
