"""Autoencoder training (MSE), e.g. the frozen AE of the VMDLS reconstruction weight.

The network must have ``reconstruct(x)`` (``ae_mnist_conv``, ``ae_resnet18_32x32``). Labels are ignored.
Published settings: Adam 1e-4 (``configs/trainers/ae_mnist.yml``).
"""

from __future__ import annotations

import torch.nn.functional as F

from ..errors import ConfigError
from .registry import TRAINERS
from .trainer import Trainer


@TRAINERS.register("autoencoder")
class AutoencoderTrainer(Trainer):
    """loss = mean squared error between ``net.reconstruct(x)`` and x (normalised input space)."""

    def setup(self, net, ctx):
        super().setup(net, ctx)
        if not callable(getattr(net, "reconstruct", None)):
            raise ConfigError(f"trainer autoencoder: network {type(net).__name__} has no reconstruct(x); "
                              f"use ae_mnist_conv or ae_resnet18_32x32")

    def training_step(self, batch):
        return {"loss": F.mse_loss(self.net.reconstruct(batch.images), batch.images)}
