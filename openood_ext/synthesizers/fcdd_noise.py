"""FCDD's other synthetic anomalies (``datasets/noise_modes.py``), the ``noise_mode`` values besides
confetti and the OE sets, in raw pixel units (0..255) like FCDD:

* ``gaussian``: 64 N(0, 1) per pixel and channel;
* ``uniform``: U(0, 255) per pixel and channel;
* ``blob``: white 6x6 squares (255), a centre with probability 0.002 per pixel (mask drawn again when
  empty), not rotated, not blurred;
* ``mixed_blob``: two independent components of white 34x34 squares (centre probability 1e-5 per
  pixel, at least one square each, not rotated, not blurred); every non-zero value of the first is
  replaced by its own uniform draw in {0, ..., 255} (per pixel and channel: FCDD's ``colorize_noise``
  with p = 1, so a square of random-coloured pixels), and the two are summed (overlaps exceed 255 and
  are clamped where the noise is used);
* ``solid``: one colour per image, each channel uniform in {0, ..., 255}.

With ``mode: noise`` the noise replaces the image, clamped to [0, 255] (FCDD's ``noise`` supervision);
with ``malformed_normal`` it is added to the ID image with FCDD's rule (:func:`~.confetti.apply_confetti`).
``supervisor`` as :class:`~.confetti.Confetti` (``batch``, ``online``, ``offline``: :mod:`.supervisor`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from .confetti import apply_confetti, apply_offline, draw_blobs, render_blobs
from .base import OutlierSource, rank_key
from .pixels import PixelSpace
from .registry import OUTLIER_SOURCES
from .supervisor import Supervisor

NoiseMode = Literal["gaussian", "uniform", "blob", "mixed_blob", "solid"]


def white_squares(h: int, w: int, c: int, prob: float, side: int, generator: torch.Generator | None) -> torch.Tensor:
    """[C, H, W]: white (255) axis-aligned squares of ``side`` pixels, centres Bernoulli(``prob``) per pixel
    (at least one), FCDD's ``confetti_noise(..., fillval=255, rotation=0)``."""
    blobs = draw_blobs(h, w, c, prob, (side, side), 255.0, generator)
    blobs.angle.zero_()
    return render_blobs(blobs, h, w)


def colorize(noise: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """FCDD's ``colorize_noise(img, (0, 0, 0), (255, 255, 255), p=1)``: every non-zero value replaced by an
    independent uniform draw in {0, ..., 255} (a draw of 0 leaves the value at 0)."""
    out = noise.clone()
    on = out != 0
    out[on] = torch.randint(0, 256, (int(on.sum()),), generator=generator).to(out.dtype)
    return out


def fcdd_noise(kind: str, shape: tuple[int, int, int, int], generator: torch.Generator | None) -> torch.Tensor:
    """FCDD's ``generate_noise(kind, shape)`` [B, C, H, W], 0..255 units (unclamped for ``gaussian`` and
    ``mixed_blob``)."""
    b, c, h, w = shape
    if kind == "gaussian":
        return torch.randn(shape, generator=generator) * 64
    if kind == "uniform":
        return torch.rand(shape, generator=generator) * 255
    if kind == "solid":
        return torch.randint(0, 256, (b, c, 1, 1), generator=generator).float().expand(shape).clone()
    if kind == "blob":
        return torch.stack([white_squares(h, w, c, 0.002, 6, generator) for _ in range(b)])
    if kind == "mixed_blob":
        # FCDD draws the whole batch of each component in turn: coloured batch, white batch, then colours
        coloured = torch.stack([white_squares(h, w, c, 1e-5, 34, generator) for _ in range(b)])
        white = torch.stack([white_squares(h, w, c, 1e-5, 34, generator) for _ in range(b)])
        return colorize(coloured, generator) + white
    raise ValueError(f"fcdd_noise: unknown kind {kind!r}")


@OUTLIER_SOURCES.register("fcdd_noise")
class FCDDNoise(OutlierSource):
    """FCDD's synthetic noise anomalies (see the module doc), aligned with the ID batch; seeded per
    (seed, epoch). ``noise``: gaussian | uniform | blob | mixed_blob | solid; ``mode``: noise |
    malformed_normal; ``supervisor``: batch | online | offline (where the anomalies are made,
    :class:`~.confetti.Confetti`)."""

    kind = "images"

    def __init__(self, noise: NoiseMode = "gaussian", mode: Literal["noise", "malformed_normal"] = "noise",
                 supervisor: Supervisor = "batch"):
        self.noise, self.mode = noise, mode
        self.supervisor = supervisor
        self.last_changed = None

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.pixels = PixelSpace(ctx.benchmark.preprocessor)
        self.generator = torch.Generator().manual_seed(ctx.seed + 7919 * int(getattr(ctx, "rank", 0)))

    def on_epoch_start(self, epoch: int) -> None:  # torchrun ranks draw differently (rank_key)
        entropy = [self.ctx.seed, 0xF0D, epoch, *rank_key(self.ctx)]
        seed = np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]
        self.generator = torch.Generator().manual_seed(int(seed) % 2**62)

    def corrupt255(self, raw: torch.Tensor, generator: torch.Generator | None,
                   offline: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, C, H, W] in 0..255 -> (anomalies in 0..255, changed-pixel maps [B, 1, H, W]);
        ``offline``: FCDD's offline malformed-normal rule (:func:`~.confetti.apply_offline`)."""
        noise = fcdd_noise(self.noise, tuple(raw.shape), generator)
        if self.mode == "noise":
            out = noise.clamp(0, 255).floor()  # FCDD: .clamp(0, 255).byte()
            return out, torch.ones(len(out), 1, *out.shape[-2:])
        return (apply_offline if offline else apply_confetti)(raw, noise.trunc())

    def corrupt(self, images: torch.Tensor) -> torch.Tensor:
        raw = self.pixels.to_unit(images.float().cpu()) * 255
        out, self.last_changed = self.corrupt255(raw, self.generator)
        return self.pixels.from_unit(out / 255).to(images.device)

    def draw(self, batch) -> torch.Tensor:
        return self.corrupt(batch.images)

    def describe(self) -> str:
        return f"fcdd_noise ({self.noise}, {self.mode}, supervisor {self.supervisor})"
