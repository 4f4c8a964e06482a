"""FCDD's networks (Liznerski et al., ICLR 2021, ``models/fcdd_cnn_{28,32,224}.py``) and the flat /
autoencoder counterparts of its HSC and AE baselines.

Fully convolutional nets (``fcdd_*``): ``forward(x) -> phi(x)`` [B, 1, n, n] (one channel, no
activation); ``self.rf`` is their :class:`~.receptive.ReceptiveField` and ``heat(x)`` returns the
pseudo-Huber map A = sqrt(phi^2 + 1) - 1 upsampled to the input ([B, H, W], higher = more anomalous).

| name | layers | map | r / j / s |
|---|---|---|---|
| fcdd_cnn28 | conv5(C->128,p2)-BN-LReLU-pool2; conv5(128->128,p2)-pool2; conv1x1(128->1) | 7x7 | 16/4/1.5 |
| fcdd_cnn32 | conv3(C->128)-BN-LReLU-pool2; conv3(->256)-BN-LReLU; conv3(->256)-BN-LReLU-pool2; conv3(->128); conv1x1 | 8x8 | 22/4/1.5 |
| fcdd_vgg11_224 | VGG-11-BN ``features[:21]`` (6 convs), conv1x1(512->1) | 28x28 | 62/8/3.5 |

BatchNorm eps 1e-4 and ``affine = bias`` in the small nets (as FCDD).

FCDD's ``lcnaug1`` preprocessing (F-MNIST, MVTec) is local contrast normalisation (LCN) followed by a
min-max scaling with per-class constants. Here ``lcn: l1`` applies LCN as the network's first operation
(it is invariant to the benchmark's mean/std normalisation); the per-class min-max is an affine map of
the input that the BatchNorm after the first convolution absorbs, so it is left out (a deviation in
parametrisation, not in the function class). The VGG net loads torchvision's
ImageNet ``vgg11_bn`` weights when ``pretrained`` (FCDD's ``_VGG``; ConfigError when they cannot be
loaded, e.g. offline), freezes ``features[:15]`` (the first four convs) with ``freeze: true``
(``_VGG_F``, MVTec; BN statistics still update in train mode), and is random with
``pretrained: false`` (``_VGG_NOPT``, ImageNet).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .receptive import ReceptiveField, check_field_fits, receptive_field, receptive_upsample
from .registry import NETWORKS


def local_contrast_normalization(x: torch.Tensor, scale: str = "l1", eps: float = 1e-8) -> torch.Tensor:
    """FCDD's LCN per sample over all channels and pixels: x - mean(x), divided by mean |.| (``l1``) or
    sqrt(sum (.)^2) / #features (``l2``). Invariant to a positive affine change of the input, so it gives the
    same result on normalised inputs as on raw pixels. ``eps`` guards constant images (FCDD has none)."""
    flat = x.flatten(1)
    centred = flat - flat.mean(1, keepdim=True)
    if scale == "l1":
        norm = centred.abs().mean(1, keepdim=True)
    else:
        norm = centred.pow(2).sum(1, keepdim=True).sqrt() / flat.shape[1]
    return (centred / norm.clamp(min=eps)).view_as(x)


def _block(cin: int, cout: int, k: int, bias: bool, bn: bool = True, act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding=(k - 1) // 2, bias=bias)]
    if bn:
        layers.append(nn.BatchNorm2d(cout, eps=1e-4, affine=bias))
    if act:
        layers.append(nn.LeakyReLU())
    return layers


def cnn28_features(in_channels: int, bias: bool) -> nn.Sequential:
    """FCDD_CNN28_W's convolutional stack (128 channels, 7x7 for 28x28 inputs)."""
    return nn.Sequential(*_block(in_channels, 128, 5, bias), nn.MaxPool2d(2, 2),
                         *_block(128, 128, 5, bias, bn=False, act=False), nn.MaxPool2d(2, 2))


def cnn32_features(in_channels: int, bias: bool) -> nn.Sequential:
    """FCDD_CNN32_LW3K's convolutional stack (128 channels, 8x8 for 32x32 inputs)."""
    return nn.Sequential(*_block(in_channels, 128, 3, bias), nn.MaxPool2d(2, 2),
                         *_block(128, 256, 3, bias), *_block(256, 256, 3, bias), nn.MaxPool2d(2, 2),
                         *_block(256, 128, 3, bias, bn=False, act=False))


class FCDDNet(nn.Module):
    """A fully convolutional one-channel map with receptive-field bookkeeping.

    Args: ``image_size`` (input side; ConfigError when the receptive field is larger), ``gauss_std``
    (std of the upsampling kernel; FCDD: 1.2 for F-MNIST/CIFAR, 8 ImageNet, 12 MVTec).
    """

    fcdd_map = True

    def __init__(self, features: nn.Sequential, channels: int, image_size: int, bias: bool, gauss_std: float | None,
                 lcn: str | None = None):
        super().__init__()
        if lcn not in (None, "l1", "l2"):
            raise ConfigError(f"network.lcn: expected null, l1 or l2, got {lcn!r}")
        self.lcn = lcn
        self.features = features
        self.conv_final = nn.Conv2d(channels, 1, 1, bias=bias)
        self.image_size, self.gauss_std = int(image_size), gauss_std
        self.rf: ReceptiveField = receptive_field(self, self.image_size)
        check_field_fits(self.rf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"{type(self).__name__}: expected {self.image_size}x{self.image_size} inputs, "
                             f"got {tuple(x.shape[-2:])}")
        if self.lcn:
            x = local_contrast_normalization(x, self.lcn)
        return self.conv_final(self.features(x))

    @staticmethod
    def pseudo_huber(phi: torch.Tensor) -> torch.Tensor:
        """A = sqrt(phi^2 + 1) - 1 (>= 0), elementwise."""
        return (phi ** 2 + 1).sqrt() - 1

    def upsample(self, a: torch.Tensor) -> torch.Tensor:
        """Maps [B, 1, n, n] -> [B, 1, H, W] (FCDD's Gaussian receptive-field upsampling)."""
        return receptive_upsample(a, self.rf, self.gauss_std)

    @torch.no_grad()
    def heat(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [B] = mean of A, heatmaps [B, H, W] = upsampled A); higher = more anomalous."""
        a = self.pseudo_huber(self(x))
        return a.flatten(1).mean(1), self.upsample(a)[:, 0]


@NETWORKS.register("fcdd_cnn28", aliases=["FCDD_CNN28_W"])
class FCDDCNN28(FCDDNet):
    def __init__(self, in_channels: int = 1, image_size: int = 28, bias: bool = True, gauss_std: float | None = 1.2,
                 lcn: str | None = None):
        super().__init__(cnn28_features(in_channels, bias), 128, image_size, bias, gauss_std, lcn)


@NETWORKS.register("fcdd_cnn32", aliases=["FCDD_CNN32_LW3K"])
class FCDDCNN32(FCDDNet):
    def __init__(self, in_channels: int = 3, image_size: int = 32, bias: bool = True, gauss_std: float | None = 1.2,
                 lcn: str | None = None):
        super().__init__(cnn32_features(in_channels, bias), 128, image_size, bias, gauss_std, lcn)


def vgg11_bn_front(pretrained: bool) -> nn.Sequential:
    """torchvision ``vgg11_bn().features[:21]`` (conv 64, P, 128, P, 256, 256, P, 512, 512; each conv-BN-ReLU)."""
    from torchvision.models import VGG11_BN_Weights, vgg11_bn
    if pretrained:
        try:
            model = vgg11_bn(weights=VGG11_BN_Weights.IMAGENET1K_V1)
        except Exception as exc:  # offline, no cached weights
            raise ConfigError(f"network.pretrained: cannot load torchvision's ImageNet vgg11_bn weights "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); put them in "
                              f"the torch hub cache or set network.pretrained=false") from None
        return model.features[:21]
    from torchvision.models.vgg import cfgs, make_layers
    return make_layers(cfgs["A"], batch_norm=True)[:21]  # the same layers, without the 100M-parameter classifier


@NETWORKS.register("fcdd_vgg11_224", aliases=["FCDD_CNN224_VGG"])
class FCDDVGG224(FCDDNet):
    """``pretrained`` (ImageNet weights, FCDD's default), ``freeze`` (first four convs frozen: ``_VGG_F``)."""

    def __init__(self, in_channels: int = 3, image_size: int = 224, pretrained: bool = True, freeze: bool = False,
                 bias: bool = True, gauss_std: float | None = 12.0, lcn: str | None = None):
        if in_channels != 3:
            raise ConfigError(f"network.in_channels: the VGG-11 net takes 3 channels, got {in_channels}")
        features = vgg11_bn_front(bool(pretrained))
        super().__init__(features, 512, image_size, bias, gauss_std, lcn)
        self.frozen = bool(freeze)
        if self.frozen:
            for p in self.features[:15].parameters():
                p.requires_grad_(False)


# ---------------------------------------------------------------------------------------- HSC baseline
class HSCNet(nn.Module):
    """FCDD's HSC baseline nets: a conv stack + one linear layer; ``forward(x) -> f(x)`` [B, D]."""

    fcdd_map = False

    def __init__(self, features: nn.Sequential, flat_dim: int, rep_dim: int, image_size: int, bias: bool,
                 gauss_std: float | None):
        super().__init__()
        self.features = features
        self.fc = nn.Linear(flat_dim, rep_dim, bias=bias)
        self.image_size, self.gauss_std = int(image_size), gauss_std
        self.rf = receptive_field(self.features, self.image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


@NETWORKS.register("hsc_cnn28", aliases=["CNN28_W"])
class HSCCNN28(HSCNet):
    def __init__(self, in_channels: int = 1, image_size: int = 28, rep_dim: int = 48, bias: bool = True,
                 gauss_std: float | None = 1.2):
        n = image_size // 4
        super().__init__(cnn28_features(in_channels, bias), 128 * n * n, rep_dim, image_size, bias, gauss_std)


@NETWORKS.register("hsc_cnn32", aliases=["CNN32_LW3K"])
class HSCCNN32(HSCNet):
    def __init__(self, in_channels: int = 3, image_size: int = 32, rep_dim: int = 64, bias: bool = True,
                 gauss_std: float | None = 1.2):
        n = image_size // 4
        super().__init__(cnn32_features(in_channels, bias), 128 * n * n, rep_dim, image_size, bias, gauss_std)


# ----------------------------------------------------------------------------------------- AE baseline
class ConvAE(nn.Module):
    """FCDD-style convolutional autoencoder: the HSC encoder, then a linear layer back to the conv map and
    transposed convolutions to the input; ``forward(x) -> reconstruction`` (same shape as x)."""

    fcdd_map = False

    def __init__(self, encoder: HSCNet, in_channels: int, image_size: int, gauss_std: float | None):
        super().__init__()
        self.encoder = encoder
        self.n = image_size // 4
        rep = encoder.fc.out_features
        self.image_size, self.gauss_std, self.rf = image_size, gauss_std, encoder.rf
        self.dfc = nn.Linear(rep, 128 * self.n * self.n)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(128, 128, 4, stride=2, padding=1), nn.BatchNorm2d(128, eps=1e-4), nn.LeakyReLU(),
            nn.ConvTranspose2d(128, 64, 4, stride=2, padding=1), nn.BatchNorm2d(64, eps=1e-4), nn.LeakyReLU(),
            nn.Conv2d(64, in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.leaky_relu(self.dfc(self.encoder(x))).view(-1, 128, self.n, self.n)
        return self.decoder(z)


@NETWORKS.register("ae_cnn28", aliases=["AE28"])
class AECNN28(ConvAE):
    def __init__(self, in_channels: int = 1, image_size: int = 28, gauss_std: float | None = 1.2):
        super().__init__(HSCCNN28(in_channels, image_size), in_channels, image_size, gauss_std)


@NETWORKS.register("ae_cnn32", aliases=["AE32"])
class AECNN32(ConvAE):
    def __init__(self, in_channels: int = 3, image_size: int = 32, gauss_std: float | None = 1.2):
        super().__init__(HSCCNN32(in_channels, image_size), in_channels, image_size, gauss_std)
