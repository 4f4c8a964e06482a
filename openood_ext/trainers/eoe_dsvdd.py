"""EOE's Deep SVDD objective (``src/eoe/training/dsvdd.py``; Ruff et al. 2018), unsupervised (no outliers):
loss ||f - c||^2 averaged over the batch of normals; score ||f - c||^2, higher = more anomalous.

The centre c is computed once before the first epoch: the mean over batches of the per-batch mean
feature of the normal training images (no gradient, network in train mode as in the published code),
then every coordinate with |c_k| < ``eps`` (0.1) is set to ±``eps`` keeping its sign.

``centre_inputs`` says which images c is computed on:

* ``normalised`` (default, the intended algorithm): the normal training images as the network sees them
  in training (normalised), without augmentation, in list order; exact-zero coordinates go to +eps.
* ``published`` (``src/eoe/training/dsvdd.py`` ``prepare_metric``, for reproducing the published
  numbers): EOE iterates its *training loader* before the first epoch, and its normalisation runs later
  on the GPU inside the training loop, so c is computed on *augmented, unnormalised* images (pixel
  values in [0, 1]) in shuffled batches of the training batch size, while the network is then trained
  on normalised ones; coordinates that are exactly 0 stay 0.

c is saved in the training state (resume restores it). Network: ``eoe_cnn32``/``eoe_cnn28`` without head.
"""

from __future__ import annotations

from typing import Literal

import torch

from ..datasets.imglist import SkipCounter
from ..schema import PositiveFloat, PositiveInt
from .eoe_base import EOEObjective
from .registry import TRAINERS


def push_centre(c: torch.Tensor, eps: float = 0.1, keep_zeros: bool = False) -> torch.Tensor:
    """Coordinates with |c_k| < eps become sign(c_k) * eps (0 -> +eps, or 0 with ``keep_zeros`` as published)."""
    small = (c.abs() < eps) & ((c != 0) if keep_zeros else torch.ones_like(c, dtype=torch.bool))
    return torch.where(small, torch.where(c < 0, -eps, eps).to(c.dtype), c)


def dsvdd_score(features: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    return (features.flatten(1) - centre).pow(2).sum(1)


class _Centre:
    """Holds the centre for ``ctx.register_state`` (saved every epoch, restored on resume)."""

    def __init__(self):
        self.value: torch.Tensor | None = None

    def state_dict(self) -> dict:
        return {"centre": None if self.value is None else self.value.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.value = state.get("centre")


@TRAINERS.register("eoe_dsvdd")
class EOEDSVDDTrainer(EOEObjective):
    """EOE Deep SVDD (see the module doc); ``eps`` > 0 (0.1), ``centre_batch_size`` (128, EOE's training
    batch size), ``centre_inputs`` normalised | published."""

    needs_outliers = None
    default_outliers = None

    def __init__(self, eps: PositiveFloat = 0.1, centre_batch_size: PositiveInt = 128,
                 centre_inputs: Literal["normalised", "published"] = "normalised"):
        self.eps, self.centre_batch_size = float(eps), int(centre_batch_size)
        self.centre_inputs = centre_inputs

    def setup(self, net, ctx):
        super().setup(net, ctx)
        self.centre = ctx.register_state("eoe_dsvdd_centre", _Centre())

    @torch.no_grad()
    def compute_centre(self, images_batches) -> torch.Tensor:
        """c from an iterable of normal image batches (see the module doc)."""
        was = self.net.training
        self.net.train()
        means = [self.net(x.to(self.ctx.device)).flatten(1).mean(0) for x in images_batches if len(x)]
        self.net.train(was)
        return push_centre(torch.stack(means).mean(0), self.eps, keep_zeros=self.centre_inputs == "published")

    def centre_loader(self) -> torch.utils.data.DataLoader:
        """The normal training images c is computed on (see ``centre_inputs`` in the module doc)."""
        bench = self.ctx.benchmark
        split = bench.split("id_train")
        if self.centre_inputs == "normalised":
            ds = bench.dataset(split, train=False)
            return torch.utils.data.DataLoader(ds, batch_size=self.centre_batch_size, collate_fn=SkipCounter())
        pre = bench.preprocessor
        channels = int(pre.get("channels", 3))
        bench.preprocessor = {**pre, "mean": [0.0] * channels, "std": [1.0] * channels}
        try:  # the training transform (augmentation included) without the normalisation
            ds = bench.dataset(split, train=True)
        finally:
            bench.preprocessor = pre
        generator = torch.Generator().manual_seed(int(self.ctx.seed))
        return torch.utils.data.DataLoader(ds, batch_size=self.centre_batch_size, shuffle=True, generator=generator,
                                           collate_fn=SkipCounter())

    def on_epoch_start(self, epoch: int) -> None:
        if self.centre.value is None:
            loader = self.centre_loader()
            self.centre.value = self.compute_centre(b[0] for b in loader)
            self.ctx.log.info("eoe_dsvdd: centre from %d normal images (%s inputs, norm %.4f)", len(loader.dataset),
                              self.centre_inputs, float(self.centre.value.norm()))

    def c(self, device) -> torch.Tensor:
        return self.centre.value.to(device)

    def loss(self, outputs, labels):
        return dsvdd_score(outputs, self.c(outputs.device)).mean()

    def score(self, outputs):
        return dsvdd_score(outputs, self.c(outputs.device))
