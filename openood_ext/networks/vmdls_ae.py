"""Autoencoders for the VMDLS reconstruction weight (postprocessor ``vmdls`` with ``ae``).

* ``ae_mnist_conv``: the ``mnist_conv`` encoder (500-d) -> Linear(latent) -> Linear(500) ->
  Linear(100*s*s) -> transposed convolutions back to the input size (published ``MNIST_AE``: latent 32,
  trained with MSE and Adam 1e-4).
* ``ae_resnet18_32x32``: the CIFAR ResNet-18 encoder (8*width-d) -> Linear(latent, 256 as lightning-bolts'
  ``AE``) -> a small upsampling decoder to 32x32 (a lighter decoder than bolts' ResNet-18 decoder).

Contract: ``reconstruct(x) -> x_hat`` (same shape as x, in the normalised input space).
``forward(x, return_feature=False)`` returns ``logits`` [B, 1] = minus the per-sample MSE (an
"AE score", higher = better reconstructed) and, with ``return_feature``, the latent code, so the network
also passes through the train/test pipelines (its "accuracy" is meaningless: one class).
Train with the ``autoencoder`` trainer (:mod:`openood_ext.trainers.autoencoder`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .registry import NETWORKS
from .vmdls import MnistConvEncoder, ResNet18Encoder


class _AE(nn.Module):
    def encode(self, x):
        return self.to_latent(self.encoder(x)[1])

    def reconstruct(self, x):
        return self.decode(self.encode(x))

    def forward(self, x, return_feature: bool = False):
        code = self.encode(x)
        err = (self.decode(code) - x).pow(2).flatten(1).mean(1)
        logits = -err[:, None]
        return (logits, code) if return_feature else logits


@NETWORKS.register("ae_mnist_conv")
class MnistConvAE(_AE):
    def __init__(self, in_channels: int = 1, image_size: int = 28, latent_dim: int = 32, num_classes: int = 1):
        super().__init__()
        self.encoder = MnistConvEncoder(in_channels, image_size)
        self.side, self.image_size = image_size // 8, image_size
        self.to_latent = nn.Linear(500, latent_dim)
        self.up = nn.Sequential(nn.Linear(latent_dim, 500), nn.ReLU(), nn.Linear(500, 100 * self.side ** 2), nn.ReLU())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(100, 100, 2, 2), nn.ReLU(), nn.ConvTranspose2d(100, 100, 2, 2), nn.ReLU(),
            nn.ConvTranspose2d(100, 100, 2, 2), nn.ReLU(), nn.Conv2d(100, in_channels, 3, 1, 1))
        self.feature_dim = latent_dim

    def decode(self, code):
        h = self.up(code).view(-1, 100, self.side, self.side)
        out = self.deconv(h)
        if out.shape[-1] != self.image_size:
            out = F.interpolate(out, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return out


@NETWORKS.register("ae_resnet18_32x32")
class ResNet18AE(_AE):
    def __init__(self, in_channels: int = 3, width: int = 64, latent_dim: int = 256, num_classes: int = 1):
        super().__init__()
        self.encoder = ResNet18Encoder(in_channels, width)
        self.to_latent = nn.Linear(self.encoder.out_dim, latent_dim)
        c = 4 * width
        self.up = nn.Linear(latent_dim, c * 4 * 4)
        self.c = c
        layers, ch = [], c
        for _ in range(3):  # 4 -> 8 -> 16 -> 32
            layers += [nn.Upsample(scale_factor=2), nn.Conv2d(ch, ch // 2, 3, 1, 1), nn.BatchNorm2d(ch // 2), nn.ReLU()]
            ch //= 2
        layers.append(nn.Conv2d(ch, in_channels, 3, 1, 1))
        self.decoder = nn.Sequential(*layers)
        self.feature_dim = latent_dim

    def decode(self, code):
        return self.decoder(self.up(code).view(-1, self.c, 4, 4))
