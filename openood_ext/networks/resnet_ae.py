"""ResNet autoencoder in lightning-bolts' ``AE`` layout, the frozen autoencoders of the published VMDLS runs.

The published VMDLS code scores CIFAR-10 with bolts' ``AE(input_height=32)`` (``resnet18`` encoder and
decoder, latent 256, checkpoint ``ae-cifar10/epoch=96.ckpt``) and CIFAR-100 with a ``resnet50`` one
(``models/train_resnet_ae.py``). The modules below have the same structure and parameter names
(``encoder.*``, ``fc.*``, ``decoder.*``), so those checkpoints' state dicts load unchanged.

* Encoder: a 3x3 stride-1 stem (``first_conv: false``, the CIFAR setting) with BatchNorm and ReLU, no
  max-pool, four stages of basic blocks (``[2, 2, 2, 2]``, 8*width-d output) or bottlenecks
  (``[3, 4, 6, 3]``, 32*width-d output), global average pooling -> [B, D].
* ``fc``: Linear(D -> latent_dim).
* Decoder: Linear(latent -> D*16) viewed as a 4x4 map, resized to image_size / 8, three stages that
  double the side (nearest-neighbour upsampling followed by a convolution, against checkerboard
  artefacts), a fourth at the same side, then a 3x3 convolution to the image channels (no output activation:
  the reconstruction lives in the normalised input space).

``width`` = 64 is bolts' network; smaller widths make test-sized networks.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class _Resize(nn.Module):
    """F.interpolate (nearest) to a fixed ``size`` or by ``scale_factor``; no parameters."""

    def __init__(self, size: int | None = None, scale_factor: float | None = None):
        super().__init__()
        self.size, self.scale_factor = size, scale_factor

    def forward(self, x):
        return F.interpolate(x, size=self.size, scale_factor=self.scale_factor)


def _conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


def _conv1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride, bias=False)


def _up(conv: nn.Module, scale: int) -> nn.Module:
    return conv if scale == 1 else nn.Sequential(_Resize(scale_factor=scale), conv)


class _Residual(nn.Module):
    """relu(body(x) + shortcut(x)); ``body`` is the block's own conv/bn chain."""

    def forward(self, x):
        skip = self.downsample if self.downsample is not None else self.upsample
        return F.relu(self.body(x) + (x if skip is None else skip(x)))


class EncoderBasic(_Residual):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1, self.bn1 = _conv3(cin, planes, stride), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv3(planes, planes), nn.BatchNorm2d(planes)
        self.downsample, self.upsample = downsample, None

    def body(self, x):
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class EncoderBottleneck(_Residual):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1, self.bn1 = _conv1(cin, planes), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv3(planes, planes, stride), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = _conv1(planes, planes * 4), nn.BatchNorm2d(planes * 4)
        self.downsample, self.upsample = downsample, None

    def body(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return self.bn3(self.conv3(F.relu(self.bn2(self.conv2(h)))))


class DecoderBasic(_Residual):
    """Like EncoderBasic with resize-convolutions; the channel change (and upsampling) is in conv2."""

    expansion = 1

    def __init__(self, cin: int, planes: int, scale: int = 1, upsample: nn.Module | None = None):
        super().__init__()
        self.conv1, self.bn1 = _conv3(cin, cin), nn.BatchNorm2d(cin)
        self.conv2, self.bn2 = _up(_conv3(cin, planes), scale), nn.BatchNorm2d(planes)
        self.downsample, self.upsample = None, upsample

    def body(self, x):
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class DecoderBottleneck(_Residual):
    expansion = 4

    def __init__(self, cin: int, planes: int, scale: int = 1, upsample: nn.Module | None = None):
        super().__init__()
        self.conv1, self.bn1 = _conv1(cin, planes), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _up(_conv3(planes, planes), scale), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = _conv1(planes, planes * 4), nn.BatchNorm2d(planes * 4)
        self.downsample, self.upsample = None, upsample

    def body(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return self.bn3(self.conv3(F.relu(self.bn2(self.conv2(h)))))


class ResNetAEEncoder(nn.Module):
    """Image [B, C, H, W] -> pooled features [B, out_dim] (out_dim = 8 * width * expansion)."""

    def __init__(self, block, layers, in_channels: int = 3, width: int = 64):
        super().__init__()
        self.inplanes = width
        self.conv1, self.bn1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
        self.layer1 = self._stage(block, width, layers[0], 1)
        self.layer2 = self._stage(block, 2 * width, layers[1], 2)
        self.layer3 = self._stage(block, 4 * width, layers[2], 2)
        self.layer4 = self._stage(block, 8 * width, layers[3], 2)
        self.out_dim = 8 * width * block.expansion

    def _stage(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            down = nn.Sequential(_conv1(self.inplanes, planes * block.expansion, stride),
                                 nn.BatchNorm2d(planes * block.expansion))
        mods = [block(self.inplanes, planes, stride, down)]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        return h.mean(dim=(2, 3))


class ResNetAEDecoder(nn.Module):
    """Latent [B, latent_dim] -> image [B, out_channels, image_size, image_size]."""

    def __init__(self, block, layers, latent_dim: int, image_size: int = 32, out_channels: int = 3, width: int = 64):
        super().__init__()
        self.inplanes = 8 * width * block.expansion
        self.linear = nn.Linear(latent_dim, self.inplanes * 16)
        self.resize = _Resize(size=image_size // 8)
        self.layer1 = self._stage(block, 4 * width, layers[0], 2)
        self.layer2 = self._stage(block, 2 * width, layers[1], 2)
        self.layer3 = self._stage(block, width, layers[2], 2)
        self.layer4 = self._stage(block, width, layers[3], 1)
        self.conv1 = nn.Conv2d(width * block.expansion, out_channels, 3, 1, 1, bias=False)

    def _stage(self, block, planes: int, blocks: int, scale: int) -> nn.Sequential:
        up = None
        if scale != 1 or self.inplanes != planes * block.expansion:
            up = nn.Sequential(_up(_conv1(self.inplanes, planes * block.expansion), scale),
                               nn.BatchNorm2d(planes * block.expansion))
        mods = [block(self.inplanes, planes, scale, up)]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, code):
        h = self.linear(code).view(code.shape[0], -1, 4, 4)
        h = self.layer4(self.layer3(self.layer2(self.layer1(self.resize(h)))))
        return self.conv1(h)


ARCHS = {"resnet18": (EncoderBasic, DecoderBasic, (2, 2, 2, 2)),
         "resnet50": (EncoderBottleneck, DecoderBottleneck, (3, 4, 6, 3))}


def resnet_autoencoder_parts(arch: str, in_channels: int, image_size: int, latent_dim: int, width: int):
    """(encoder, fc, decoder) of bolts' ``AE`` with the ``arch`` (resnet18 | resnet50) encoder/decoder."""
    enc_block, dec_block, layers = ARCHS[arch]
    encoder = ResNetAEEncoder(enc_block, layers, in_channels, width)
    fc = nn.Linear(encoder.out_dim, latent_dim)
    decoder = ResNetAEDecoder(dec_block, layers, latent_dim, image_size, in_channels, width)
    return encoder, fc, decoder

