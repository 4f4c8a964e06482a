"""Autoencoders for the VMDLS reconstruction weight (postprocessor ``vmdls`` with ``ae``), as published.

* ``ae_mnist_conv``: the published ``MNIST_AE``: the ``mnist_conv`` encoder (500-d) -> ``fc``
  Linear(500 -> latent, 32) -> decoder: Linear(latent -> 500) and Linear(500 -> 100*s*s) with no activation
  between them, a 100 x s x s map, four 2x2 stride-1 transposed convolutions (+1 px each) and two 2x2
  stride-2 ones, each followed by ReLU, then a 1x1 convolution to the image channels. At 28 px (s = 3) that
  is 3 -> 7 -> 28, exactly the published shape; other sides (the 8x8 digits: 1 -> 20) are resized to the
  input size at the end (bilinear). Trained with MSE and Adam 1e-4 as published.
  :func:`published_mnist_ae_state_dict` maps a published checkpoint's keys onto this module.
* ``ae_resnet18_32x32`` / ``ae_resnet50_32x32``: lightning-bolts' ``AE`` with the resnet18 (the published
  CIFAR-10 autoencoder, latent 256) or resnet50 (CIFAR-100) encoder and decoder
  (:mod:`.resnet_ae`); a bolts checkpoint's ``state_dict`` loads unchanged.

Contract: ``reconstruct(x) -> x_hat`` (same shape as x, in the normalised input space).
``forward(x, return_feature=False)`` returns ``logits`` [B, 1] = minus the per-sample MSE (an
"AE score", higher = better reconstructed) and, with ``return_feature``, the latent code, so the network
also passes through the train/test pipelines (its "accuracy" is meaningless: one class).
Train with the ``autoencoder`` trainer (:mod:`openood_ext.trainers.autoencoder`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .registry import NETWORKS
from .resnet_ae import resnet_autoencoder_parts
from .vmdls import MnistConvEncoder


class _AE(nn.Module):
    """``encoder(x) -> [B, D]``, ``fc`` to the latent code, ``decoder(code) -> x_hat``."""

    def encode(self, x):
        return self.fc(self.encoder_features(x))

    def encoder_features(self, x):
        return self.encoder(x)

    def decode(self, code):
        return self.decoder(code)

    def reconstruct(self, x):
        return self.decode(self.encode(x))

    def forward(self, x, return_feature: bool = False):
        code = self.encode(x)
        err = (self.decode(code) - x).pow(2).flatten(1).mean(1)
        logits = -err[:, None]
        return (logits, code) if return_feature else logits


class MnistConvDecoder(nn.Module):
    """The published ``MnistConvDecoder`` (see the module docstring); ``side`` = image_size // 8."""

    def __init__(self, latent_dim: int, side: int, out_channels: int = 1, channels: int = 100):
        super().__init__()
        self.side, self.channels = side, channels
        self.latent = nn.Linear(latent_dim, 500)
        self.enc_layer = nn.Linear(500, channels * side * side)
        c = channels
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(c, c, 2, 1, 0), nn.ReLU(), nn.ConvTranspose2d(c, c, 2, 1, 0), nn.ReLU(),
            nn.ConvTranspose2d(c, c, 2, 1, 0), nn.ReLU(), nn.ConvTranspose2d(c, c, 2, 1, 0), nn.ReLU(),
            nn.ConvTranspose2d(c, c, 2, 2, 0), nn.ReLU(), nn.ConvTranspose2d(c, c, 2, 2, 0), nn.ReLU(),
            nn.Conv2d(c, out_channels, 1, 1, 0))

    def forward(self, code):
        h = self.enc_layer(self.latent(code)).view(-1, self.channels, self.side, self.side)
        return self.decoder(h)


@NETWORKS.register("ae_mnist_conv")
class MnistConvAE(_AE):
    def __init__(self, in_channels: int = 1, image_size: int = 28, latent_dim: int = 32, num_classes: int = 1):
        super().__init__()
        self.encoder = MnistConvEncoder(in_channels, image_size)
        self.decoder = MnistConvDecoder(latent_dim, image_size // 8, in_channels)  # registered before fc, as published
        self.fc = nn.Linear(self.encoder.out_dim, latent_dim)
        self.image_size, self.feature_dim = image_size, latent_dim

    def encoder_features(self, x):
        return self.encoder(x)[1]

    def decode(self, code):
        out = self.decoder(code)
        if out.shape[-1] != self.image_size:  # only off the published 28 px shape
            out = F.interpolate(out, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return out


#: published ``MnistConvEncoder.encoder`` Sequential index -> our MnistConvEncoder layer
_PUBLISHED_ENCODER = {"encoder.encoder.0.": "encoder.conv1.", "encoder.encoder.2.": "encoder.conv2.",
                      "encoder.encoder.5.": "encoder.conv3.", "encoder.encoder.7.": "encoder.conv4.",
                      "encoder.encoder.10.": "encoder.conv5.", "encoder.dec_layer.": "encoder.fc."}


def published_mnist_ae_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A published ``MNIST_AE`` state dict (a Lightning checkpoint's ``state_dict``) with its keys renamed for
    ``ae_mnist_conv``: only the encoder's layers are named differently; ``fc.*`` and ``decoder.*`` match."""
    out = {}
    for key, value in state.items():
        for old, new in _PUBLISHED_ENCODER.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


class _ResNetAE(_AE):
    arch = "resnet18"

    def __init__(self, in_channels: int = 3, image_size: int = 32, width: int = 64, latent_dim: int = 256,
                 num_classes: int = 1):
        super().__init__()
        self.encoder, self.fc, self.decoder = resnet_autoencoder_parts(self.arch, in_channels, image_size,
                                                                       latent_dim, width)
        self.feature_dim = latent_dim


@NETWORKS.register("ae_resnet18_32x32")
class ResNet18AE(_ResNetAE):
    """bolts' ``AE(input_height=32)``: resnet18 encoder (512-d at width 64) and decoder, latent 256."""

    arch = "resnet18"


@NETWORKS.register("ae_resnet50_32x32")
class ResNet50AE(_ResNetAE):
    """bolts' ``AE`` with ``enc_type: resnet50`` (2048-d at width 64), the published CIFAR-100 autoencoder."""

    arch = "resnet50"
