"""The larger VMDLS encoders of the published code (``BGU-CS-VIL/vmdls``, ``models/{vgg,densenet,wide_resnet}.py``).

Every encoder follows the contract of :mod:`.vmdls`: ``forward(x) -> (pooled, out)`` with ``pooled`` the
list of three global-average-pooled intermediate maps l1, l2, l3 ([B, C_i]) and ``out`` the flat encoder
output [B, out_dim]; ``first_layer(x)`` gives l1 alone; ``out_dim`` and ``pooled_dims`` name the sizes.
Global pooling is adaptive, so any input side that survives the down-sampling works (the published code
hard-codes 32x32 through ``avg_pool2d(., 8)`` and VGG's 256*4*4 linear layer; at 32x32 both agree).

* ``vgg`` (:class:`VGGEncoder`, published ``VGGM``): 8 conv3x3+BN+ReLU layers (64, 128 | pool | 256, 256 |
  pool | 256 x4 | pool), then Linear(256*(s/8)^2 -> 1024)+ReLU, Linear(1024 -> 1024)+ReLU; out 1024.
  l1/l2/l3 = the 2nd/4th/8th conv's BatchNorm output **before its ReLU** (128/256/256-d), as the code's
  ``encoder[0:5]``, ``[0:12]``, ``[0:25]`` slices.
* ``densenet`` (:class:`DenseNetEncoder`, published ``DenseNet3(100)``): DenseNet-BC, depth 100, growth 12,
  reduction 0.5, no dropout; l1 = after transition 1 (108-d), l2 = after transition 2 (150-d), l3 = the
  final BN-ReLU (342-d), out = the same pooled final BN-ReLU, so l3 == out (duplicated in the ensemble,
  as published). ``init``: ``he`` (default, the intended He init N(0, 2/(k*k*out_channels)) of the
  original DenseNet code) or ``published`` (the released code reuses the block-size variable n = 16, so
  every conv is drawn from N(0, 2/16)).
* ``wide_resnet`` (:class:`WideResNetEncoder`, published ``WideResNet(28, 10, dropRate=0.1)``): pre-activation
  WRN-28-10 (widths 16, 160, 320, 640); out = pooled ReLU(BN(block3)) (640-d); l1/l2 = pooled block1/block2
  (160/320-d). ``layers``: ``published`` (default; l3 = out, because the code's ``get_layer_output``
  returns ``forward()`` for every index > 2, duplicating the final features) or ``block3`` (l3 = pooled
  block3 output before the final BN-ReLU, the branch the code contains but never reaches).
  ``mc_dropout``: False (default: dropout only in training mode) or True (published: the block's
  ``F.dropout(..., training=True)`` keeps dropout on at test time, so features are stochastic).
  With ``mc_dropout`` the published test step reads every piece of the VMDLS ensemble from its own pass
  (μ from a full pass, then l1, l2, l3 and the output from ``get_layer_output(x, 1..4)``: five independent
  dropout draws; :meth:`WideResNetEncoder.layer_output` is that call). ``ensemble_draws: separate``
  (default) does the same; ``shared`` reads all five from one pass (coherent features, one fifth of the cost).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


def _gap(t: torch.Tensor) -> torch.Tensor:
    return t.mean(dim=(2, 3))


# --------------------------------------------------------------------------------------------- VGG
class VGGEncoder(nn.Module):
    """The published ``VGGM`` encoder for square inputs of side ``image_size`` (multiple of 8)."""

    _PLAN = (64, 128, "M", 256, 256, "M", 256, 256, 256, 256, "M")

    def __init__(self, in_channels: int = 3, image_size: int = 32, hidden: int = 1024):
        super().__init__()
        if image_size < 8 or image_size % 8:
            raise ConfigError(f"network.image_size: the vgg encoder needs a multiple of 8, got {image_size}")
        convs, bns, c = nn.ModuleList(), nn.ModuleList(), in_channels
        for v in self._PLAN:
            if v != "M":
                convs.append(nn.Conv2d(c, v, 3, padding=1))
                bns.append(nn.BatchNorm2d(v))
                c = v
        self.convs, self.bns = convs, bns
        side = image_size // 8
        self.fc1, self.fc2 = nn.Linear(256 * side * side, hidden), nn.Linear(hidden, hidden)
        self.out_dim, self.pooled_dims = hidden, (128, 256, 256)

    def _conv(self, i: int, h: torch.Tensor) -> torch.Tensor:
        return self.bns[i](self.convs[i](h))          # pre-activation (BN output)

    def forward(self, x: torch.Tensor):
        pooled, h = [], x
        for i in range(8):
            pre = self._conv(i, h)
            if i in (1, 3, 7):                        # code slices [0:5], [0:12], [0:25]
                pooled.append(_gap(pre))
            h = F.relu(pre)
            if i in (1, 3, 7):
                h = F.max_pool2d(h, 2)
        out = F.relu(self.fc2(F.relu(self.fc1(h.flatten(1)))))
        return pooled, out

    def first_layer(self, x: torch.Tensor) -> torch.Tensor:
        return _gap(self._conv(1, F.relu(self._conv(0, x))))


# ---------------------------------------------------------------------------------------- DenseNet
class _Bottleneck(nn.Module):
    def __init__(self, in_planes: int, growth: int):
        super().__init__()
        inter = 4 * growth
        self.bn1, self.conv1 = nn.BatchNorm2d(in_planes), nn.Conv2d(in_planes, inter, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(inter), nn.Conv2d(inter, growth, 3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([x, out], 1)


class _Transition(nn.Module):
    def __init__(self, in_planes: int, out_planes: int):
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(in_planes), nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x):
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


DENSENET_INITS = ("he", "published")


class DenseNetEncoder(nn.Module):
    """DenseNet-BC (``depth`` 100, ``growth`` 12 as published); see the module docstring."""

    def __init__(self, in_channels: int = 3, depth: int = 100, growth: int = 12, reduction: float = 0.5,
                 init: str = "he"):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ConfigError(f"network.encoder_args.depth: DenseNet-BC needs depth = 6k + 4 >= 10, got {depth}")
        if init not in DENSENET_INITS:
            raise ConfigError(f"network.encoder_args.init: expected one of {', '.join(DENSENET_INITS)}, got {init!r}")
        n = (depth - 4) // 6
        planes = 2 * growth
        self.conv1 = nn.Conv2d(in_channels, planes, 3, padding=1, bias=False)
        blocks, dims = [], []
        for stage in range(3):
            layers = []
            for i in range(n):
                layers.append(_Bottleneck(planes + i * growth, growth))
            planes += n * growth
            blocks.append(nn.Sequential(*layers))
            if stage < 2:
                out_planes = int(math.floor(planes * reduction))
                blocks.append(_Transition(planes, out_planes))
                planes = out_planes
            dims.append(planes)
        self.block1, self.trans1, self.block2, self.trans2, self.block3 = blocks
        self.bn = nn.BatchNorm2d(planes)
        self.out_dim, self.pooled_dims = planes, tuple(dims)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan = n if init == "published" else m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / fan))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()

    def forward(self, x: torch.Tensor):
        h1 = self.trans1(self.block1(self.conv1(x)))
        h2 = self.trans2(self.block2(h1))
        l3 = _gap(F.relu(self.bn(self.block3(h2))))
        return [_gap(h1), _gap(h2), l3], l3

    def first_layer(self, x: torch.Tensor) -> torch.Tensor:
        return _gap(self.trans1(self.block1(self.conv1(x))))


# ------------------------------------------------------------------------------------- Wide ResNet
class _WideBlock(nn.Module):
    """Pre-activation WRN block (the published ``BasicBlock``)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop: float, mc_dropout: bool):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(in_planes), nn.BatchNorm2d(out_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.equal = in_planes == out_planes
        self.shortcut = None if self.equal else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)
        self.drop, self.mc_dropout = drop, mc_dropout

    def forward(self, x):
        act = F.relu(self.bn1(x))
        if not self.equal:
            x = act                                   # as published: the shortcut sees the activated input
        out = F.relu(self.bn2(self.conv1(act)))
        if self.drop > 0:
            out = F.dropout(out, p=self.drop, training=self.training or self.mc_dropout)
        out = self.conv2(out)
        return (x if self.equal else self.shortcut(x)) + out


WRN_LAYERS = ("published", "block3")
ENSEMBLE_DRAWS = ("separate", "shared")


class WideResNetEncoder(nn.Module):
    """WRN-``depth``-``widen`` (28-10, dropout 0.1 as published); see the module docstring."""

    def __init__(self, in_channels: int = 3, depth: int = 28, widen: int = 10, dropout: float = 0.1,
                 mc_dropout: bool = False, layers: str = "published", ensemble_draws: str = "separate"):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ConfigError(f"network.encoder_args.depth: a wide ResNet needs depth = 6k + 4 >= 10, got {depth}")
        if widen < 1:
            raise ConfigError(f"network.encoder_args.widen: expected an integer >= 1, got {widen}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"network.encoder_args.dropout: expected a value in [0, 1), got {dropout}")
        if layers not in WRN_LAYERS:
            raise ConfigError(f"network.encoder_args.layers: expected one of {', '.join(WRN_LAYERS)}, got {layers!r}")
        if ensemble_draws not in ENSEMBLE_DRAWS:
            raise ConfigError(f"network.encoder_args.ensemble_draws: expected one of {', '.join(ENSEMBLE_DRAWS)}, "
                              f"got {ensemble_draws!r}")
        #: the test-time features are random and the ensemble takes each piece from its own pass (published)
        self.separate_draws = bool(mc_dropout) and dropout > 0 and ensemble_draws == "separate"
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)

        def stage(cin, cout, stride):
            return nn.Sequential(*[_WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1,
                                              dropout, bool(mc_dropout)) for i in range(n)])

        self.block1 = stage(widths[0], widths[1], 1)
        self.block2 = stage(widths[1], widths[2], 2)
        self.block3 = stage(widths[2], widths[3], 2)
        self.bn = nn.BatchNorm2d(widths[3])
        self.layers = layers
        self.out_dim, self.pooled_dims = widths[3], tuple(widths[1:])

    def forward(self, x: torch.Tensor):
        h1 = self.block1(self.conv1(x))
        h2 = self.block2(h1)
        h3 = self.block3(h2)
        out = _gap(F.relu(self.bn(h3)))
        l3 = out if self.layers == "published" else _gap(h3)
        return [_gap(h1), _gap(h2), l3], out

    def first_layer(self, x: torch.Tensor) -> torch.Tensor:
        return _gap(self.block1(self.conv1(x)))

    def layer_output(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """The published ``get_layer_output(x, index)``, one pass each: 1 = pooled block1, 2 = pooled block2
        (through block1), 3 = l3 (the output under ``layers: published``), 4 = the encoder output."""
        if index == 1:
            return self.first_layer(x)
        if index == 2:
            return _gap(self.block2(self.block1(self.conv1(x))))
        if index == 3 and self.layers == "block3":
            return _gap(self.block3(self.block2(self.block1(self.conv1(x)))))
        return self(x)[1]
