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
parametrisation, not in the function class, except at zero-padded borders). ``lcn_minmax: [[min per
channel], [max per channel]]`` applies it, (LCN(x) - min) / (max - min), with FCDD's published per-class
constants to reproduce its numbers exactly. The VGG net loads torchvision's
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
                 lcn: str | None = None, lcn_minmax: list[list[float]] | None = None):
        super().__init__()
        if lcn not in (None, "l1", "l2"):
            raise ConfigError(f"network.lcn: expected null, l1 or l2, got {lcn!r}")
        self.lcn = lcn
        self.lcn_minmax = None
        if lcn_minmax is not None:
            cin = next(m for m in features.modules() if isinstance(m, nn.Conv2d)).in_channels
            if lcn is None or len(lcn_minmax) != 2 or any(len(v) != cin for v in lcn_minmax):
                raise ConfigError(f"network.lcn_minmax: expected [[min x {cin}], [max x {cin}]] with lcn set, "
                                  f"got {lcn_minmax!r} (lcn {lcn!r})")
            lo, hi = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in lcn_minmax)
            self.register_buffer("minmax_lo", lo, persistent=False)
            self.register_buffer("minmax_range", hi - lo, persistent=False)
            self.lcn_minmax = [list(map(float, v)) for v in lcn_minmax]
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
            if self.lcn_minmax is not None:  # FCDD's per-class min-max after LCN (transforms.Normalize)
                x = (x - self.minmax_lo) / self.minmax_range
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
                 lcn: str | None = None, lcn_minmax: list[list[float]] | None = None):
        super().__init__(cnn28_features(in_channels, bias), 128, image_size, bias, gauss_std, lcn, lcn_minmax)


@NETWORKS.register("fcdd_cnn32", aliases=["FCDD_CNN32_LW3K"])
class FCDDCNN32(FCDDNet):
    def __init__(self, in_channels: int = 3, image_size: int = 32, bias: bool = True, gauss_std: float | None = 1.2,
                 lcn: str | None = None, lcn_minmax: list[list[float]] | None = None):
        super().__init__(cnn32_features(in_channels, bias), 128, image_size, bias, gauss_std, lcn, lcn_minmax)


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
                 bias: bool = True, gauss_std: float | None = 12.0, lcn: str | None = None,
                 lcn_minmax: list[list[float]] | None = None):
        if in_channels != 3:
            raise ConfigError(f"network.in_channels: the VGG-11 net takes 3 channels, got {in_channels}")
        features = vgg11_bn_front(bool(pretrained))
        super().__init__(features, 512, image_size, bias, gauss_std, lcn, lcn_minmax)
        self.frozen = bool(freeze)
        if self.frozen:
            for p in self.features[:15].parameters():
                p.requires_grad_(False)


# ------------------------------------------------------------------------- HSC and AE baselines
# FCDD's flat baselines (``models/shallow_cnn_{28,32}.py``): the HSC nets are the classes FCDD's runner
# maps each FCDD net to (``NET_TO_HSC``), the AE nets its ``NET_TO_AE`` choices. Layer names are the
# published ones, so a published state dict loads as is (``load_state_dict``, strict). ``rf`` is the
# receptive field of the *matching FCDD net*: FCDD blurs the baselines' display heatmaps with a kernel
# of that size.


def _bn2(c: int, bias: bool) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-4, affine=bias)


class FlatBaseline(nn.Module):
    """Common part of the baseline nets: ``image_size``, ``gauss_std``, ``rf``; ``fcdd_map = False``."""

    fcdd_map = False

    def _geometry(self, fcdd_features: nn.Sequential, image_size: int, gauss_std: float | None) -> None:
        self.image_size, self.gauss_std = int(image_size), gauss_std
        self.rf = receptive_field(fcdd_features, self.image_size)

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"{type(self).__name__}: expected {self.image_size}x{self.image_size} inputs, "
                             f"got {tuple(x.shape[-2:])}")


class HSCCNN28Core(FlatBaseline):
    """conv5(C->w1,p2)-BN-LReLU-pool2; conv5(w1->w2,p2)-BN-LReLU-pool2; linear(w2*7*7 -> 48).
    ``forward(x) -> f(x)`` [B, 48]. (w1, w2) = (128, 64): FCDD's ``CNN28_W``; (8, 4): ``CNN28``."""

    def __init__(self, in_channels: int, image_size: int, bias: bool, gauss_std: float | None, widths=(128, 64)):
        super().__init__()
        if image_size != 28:
            raise ConfigError(f"network.image_size: FCDD's 28x28 baselines take 28x28 inputs, got {image_size}")
        w1, w2 = widths
        self.conv1, self.bn1 = nn.Conv2d(in_channels, w1, 5, padding=2, bias=bias), _bn2(w1, bias)
        self.conv2, self.bn2 = nn.Conv2d(w1, w2, 5, padding=2, bias=bias), _bn2(w2, bias)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc_final = nn.Linear(w2 * 7 * 7, 48, bias=bias)
        self._geometry(cnn28_features(in_channels, bias), image_size, gauss_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        x = self.pool(F.leaky_relu(self.bn1(self.conv1(x))))
        x = self.pool(F.leaky_relu(self.bn2(self.conv2(x))))
        return self.fc_final(x.flatten(1))


@NETWORKS.register("hsc_cnn28", aliases=["CNN28_W"])
class HSCCNN28(HSCCNN28Core):
    """FCDD's ``CNN28_W`` (the HSC baseline of ``FCDD_CNN28_W``, F-MNIST)."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, bias: bool = True, gauss_std: float | None = 1.2):
        super().__init__(in_channels, image_size, bias, gauss_std, (128, 64))


@NETWORKS.register("hsc_cnn32", aliases=["CNN32_LW3K"])
class HSCCNN32(FlatBaseline):
    """FCDD's ``CNN32_LW3K`` (HSC baseline of ``FCDD_CNN32_LW3K``, CIFAR-10): conv3 128-P, 256, 256-P,
    128-P (each conv-BN-LReLU), linear 2048->512-BN1d-LReLU, linear 512->64. ``forward -> [B, 64]``."""

    def __init__(self, in_channels: int = 3, image_size: int = 32, bias: bool = True, gauss_std: float | None = 1.2):
        super().__init__()
        if image_size != 32:
            raise ConfigError(f"network.image_size: FCDD's 32x32 baselines take 32x32 inputs, got {image_size}")
        self.conv1, self.bn2d1 = nn.Conv2d(in_channels, 128, 3, padding=1, bias=bias), _bn2(128, bias)
        self.conv2, self.bn2d2 = nn.Conv2d(128, 256, 3, padding=1, bias=bias), _bn2(256, bias)
        self.conv25, self.bn2d25 = nn.Conv2d(256, 256, 3, padding=1, bias=bias), _bn2(256, bias)
        self.conv3, self.bn2d3 = nn.Conv2d(256, 128, 3, padding=1, bias=bias), _bn2(128, bias)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(128 * 4 * 4, 512, bias=bias)
        self.bn1d1 = nn.BatchNorm1d(512, eps=1e-4, affine=bias)
        self.fc_final = nn.Linear(512, 64, bias=bias)
        self._geometry(cnn32_features(in_channels, bias), image_size, gauss_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        x = self.pool(F.leaky_relu(self.bn2d1(self.conv1(x))))
        x = F.leaky_relu(self.bn2d2(self.conv2(x)))
        x = self.pool(F.leaky_relu(self.bn2d25(self.conv25(x))))
        x = self.pool(F.leaky_relu(self.bn2d3(self.conv3(x))))
        return self.fc_final(F.leaky_relu(self.bn1d1(self.fc1(x.flatten(1)))))


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2)  # nearest, as FCDD


@NETWORKS.register("ae_cnn28", aliases=["AE28"])
class AECNN28(FlatBaseline):
    """FCDD's ``AE28`` (the AE baseline of both 28x28 FCDD nets): encoder ``CNN28`` (conv 8, 4; linear -> 48),
    the code viewed as [3, 4, 4], then LReLU-up2-deconv5(3->4,p2)-BN-LReLU-up2-deconv5(4->8,p3)-BN-LReLU-up2-
    deconv5(8->C,p2)-sigmoid (deconvolutions Xavier-initialised with the leaky-ReLU gain, as FCDD).
    ``forward(x) -> reconstruction`` [B, C, 28, 28] in (0, 1)."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, bias: bool = True, gauss_std: float | None = 1.2):
        super().__init__()
        self.encoder = HSCCNN28Core(in_channels, image_size, bias, gauss_std, (8, 4))
        self.deconv1, self.bn3 = nn.ConvTranspose2d(3, 4, 5, padding=2, bias=bias), _bn2(4, bias)
        self.deconv2, self.bn4 = nn.ConvTranspose2d(4, 8, 5, padding=3, bias=bias), _bn2(8, bias)
        self.deconv3 = nn.ConvTranspose2d(8, in_channels, 5, padding=2, bias=bias)
        for deconv in (self.deconv1, self.deconv2, self.deconv3):
            nn.init.xavier_uniform_(deconv.weight, gain=nn.init.calculate_gain("leaky_relu"))
        self._geometry(cnn28_features(in_channels, bias), image_size, gauss_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x).view(-1, 3, 4, 4)
        z = self.deconv1(_up(F.leaky_relu(z)))
        z = self.deconv2(_up(F.leaky_relu(self.bn3(z))))
        z = self.deconv3(_up(F.leaky_relu(self.bn4(z))))
        return torch.sigmoid(z)


@NETWORKS.register("ae_cnn32", aliases=["AE32_LW3K", "AE32"])
class AECNN32(FlatBaseline):
    """FCDD's ``AE32_LW3K`` (AE baseline of ``FCDD_CNN32_LW3K``): encoder ``CNN32_LW3K``, BN1d(64), the code
    viewed as [4, 4, 4], LReLU, then deconv3 128-up2, 256, 256-up2, 128-up2 (each deconv-BN-LReLU), deconv3
    (128->C); no output activation. ``forward(x) -> reconstruction`` [B, C, 32, 32]."""

    def __init__(self, in_channels: int = 3, image_size: int = 32, bias: bool = True, gauss_std: float | None = 1.2):
        super().__init__()
        self.encoder = HSCCNN32(in_channels, image_size, bias, gauss_std)
        self.bn1d = nn.BatchNorm1d(64, eps=1e-4, affine=bias)
        self.deconv1, self.bn2d4 = nn.ConvTranspose2d(4, 128, 3, padding=1, bias=bias), _bn2(128, bias)
        self.deconv2, self.bn2d5 = nn.ConvTranspose2d(128, 256, 3, padding=1, bias=bias), _bn2(256, bias)
        self.deconv25, self.bn2d55 = nn.ConvTranspose2d(256, 256, 3, padding=1, bias=bias), _bn2(256, bias)
        self.deconv3, self.bn2d6 = nn.ConvTranspose2d(256, 128, 3, padding=1, bias=bias), _bn2(128, bias)
        self.deconv4 = nn.ConvTranspose2d(128, in_channels, 3, padding=1, bias=bias)
        self._geometry(cnn32_features(in_channels, bias), image_size, gauss_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.leaky_relu(self.bn1d(self.encoder(x))).view(-1, 4, 4, 4)
        z = _up(F.leaky_relu(self.bn2d4(self.deconv1(z))))
        z = F.leaky_relu(self.bn2d5(self.deconv2(z)))
        z = _up(F.leaky_relu(self.bn2d55(self.deconv25(z))))
        z = _up(F.leaky_relu(self.bn2d6(self.deconv3(z))))
        return self.deconv4(z)
