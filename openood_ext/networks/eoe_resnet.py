"""EOE's network for 224x224 images (ImageNet-30), ``eoe_resnet224``: ``liznerski/eoe``
``src/eoe/models/resnet.py`` ``WideResNet`` -- despite its name a ResNet-18 with CBAM attention in every
basic block (taken there from hendrycks/ss-ood).

Layout (module names equal the published ones, so its state dicts load): conv7x7/2 (3->64, no bias) - BN -
ReLU - maxpool3/2; four stages of two BasicBlocks (64, 128/2, 256/2, 512/2; conv3x3-BN-ReLU-conv3x3-BN,
then CBAM, then + shortcut (1x1 conv/2 - BN when the shape changes), ReLU); AvgPool2d(7); Linear(512 ->
``rep_dim`` = 256); with ``clf: true`` a Linear(rep_dim -> 1) head (EOE's BCE/focal objectives).
CBAM(C, reduction 16): channel gate = sigmoid(MLP(avgpool) + MLP(maxpool)) with MLP C -> C/16 -> C; spatial
gate = sigmoid(BN(conv7x7([max_c, mean_c]))) with BN eps 1e-5, momentum 0.01.

The backbone (everything but CBAM and the heads) has exactly torchvision ``resnet18``'s parameter names
and shapes. Initialisation: EOE's constructor applies kaiming inits, but every class x seed run calls
``reset_parameters`` on all modules, so the published runs train from PyTorch's default init -- our
default; ``published_init: true`` applies the constructor's inits instead (conv weights whose state-dict
name contains "conv": kaiming-normal fan_out; BN weights 1, the spatial gate's BN weight 0; biases 0;
``fc`` and ``linear`` kaiming-normal).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .registry import NETWORKS


class ChannelGate(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(channels, channels // reduction), nn.ReLU(),
                                 nn.Linear(channels // reduction, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att = self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1))
        return x * torch.sigmoid(att)[:, :, None, None]


class _SpatialConv(nn.Module):
    """conv7x7 (2 -> 1, no bias) + BN, named ``conv``/``bn`` as the published ``BasicConv``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class SpatialGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.spatial = _SpatialConv()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.max(1, keepdim=True).values, x.mean(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.spatial(pooled))


class CBAM(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.ChannelGate = ChannelGate(channels, reduction)
        self.SpatialGate = SpatialGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.SpatialGate(self.ChannelGate(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.cbam = CBAM(cout, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out = self.cbam(out)
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


@NETWORKS.register("eoe_resnet224", aliases=["EOE_WideResNet"])
class EOEResNet224(nn.Module):
    """EOE's ImageNet-30 network (see the module doc): [B, 3, 224, 224] -> [B, rep_dim] (or [B, 1] with clf)."""

    image_size = 224

    def __init__(self, rep_dim: int = 256, clf: bool = False, published_init: bool = False):
        super().__init__()
        if rep_dim < 1:
            raise ConfigError(f"network.rep_dim: expected an integer >= 1, got {rep_dim}")
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, stages = 64, []
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AvgPool2d(7)
        self.fc = nn.Linear(512, rep_dim)
        self.rep_dim, self.feature_dim, self.clf = rep_dim, rep_dim, bool(clf)
        self.linear = nn.Linear(rep_dim, 1) if clf else None
        if published_init:
            self._published_init()

    def _published_init(self) -> None:
        with torch.no_grad():
            for key, tensor in self.state_dict(keep_vars=True).items():
                leaf = key.rsplit(".", 1)[-1]
                if leaf == "weight" and "conv" in key:
                    nn.init.kaiming_normal_(tensor, mode="fan_out")
                elif leaf == "weight" and "bn" in key:
                    tensor.fill_(0.0 if "SpatialGate" in key else 1.0)
                elif leaf == "bias":
                    tensor.zero_()
            nn.init.kaiming_normal_(self.fc.weight)
            if self.linear is not None:
                nn.init.kaiming_normal_(self.linear.weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-3:] != (3, 224, 224):
            raise ValueError(f"eoe_resnet224: expected inputs [B, 3, 224, 224], got {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))

    def forward(self, x: torch.Tensor, return_feature: bool = False):
        rep = self.features(x)
        out = self.linear(rep) if self.linear is not None else rep
        return (out, rep) if return_feature else out

    def get_fc_layer(self) -> nn.Linear:
        return self.linear if self.linear is not None else self.fc
