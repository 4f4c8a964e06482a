"""NPOS's network (``deeplearning-wisc/npos`` ``models/resnet_outliers.py``, ``SupCEHeadResNet``): a
backbone plus two heads on its raw penultimate feature f (the backbone's ``features``):

* ``head``: projection f -> Linear(D, D) -> ReLU -> Linear(D, head_dim) (128), L2-normalised (``project``);
  the CIDER losses use it.
* ``mlp``: the binary ID-vs-outlier head f -> Linear(D, mlp_hidden) (128) -> ReLU -> Linear(., 1)
  (``open_logit``), on the **raw** penultimate feature (and on raw synthesised outliers).
* ``fc``: Linear(D, num_classes), kept so the network honours the classifier contract
  (``net(x, return_feature=True) -> (logits, f)``); NPOS puts no loss on it (as published, it stays at
  its initialisation). Test-time scoring is KNN on normalised f (postprocessor ``npos``/``knn``).

Registered: ``npos_resnet18_32x32`` (CIFAR-10, 512-d at width 64), ``npos_resnet34_32x32`` (CIFAR-100),
and ``npos_net`` with any NETWORKS backbone (``backbone: digits_cnn`` for the CPU digits check).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import NETWORKS
from .resnet import BasicBlock
from .small_cnn import Classifier


class ResNet32x32(nn.Module):
    """CIFAR ResNet backbone (3x3 stride-1 stem, no max-pool) with ``blocks`` BasicBlocks per stage."""

    def __init__(self, blocks=(2, 2, 2, 2), in_channels: int = 3, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages, in_planes = [], width
        for i, (n, stride) in enumerate(zip(blocks, (1, 2, 2, 2))):
            planes = width * 2 ** i
            layers = []
            for j in range(n):
                layers.append(BasicBlock(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.feature_dim = in_planes
        for m in self.modules():  # Kaiming init as in the published backbone
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class NPOSNet(Classifier):
    """Backbone + ``head`` (projection, normalised) + ``mlp`` (open-set logit) + untrained ``fc``.

    ``features(x)`` -> raw penultimate f [B, D]; ``project(f)`` -> unit z [B, head_dim];
    ``open_logit(f)`` -> [B] logits (positive = ID); ``forward(x, return_feature)`` as every Classifier.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, head_dim: int = 128,
                 mlp_hidden: int = 128):
        super().__init__()
        if head_dim < 1 or mlp_hidden < 1:
            raise ValueError(f"head_dim and mlp_hidden must be >= 1, got {head_dim}, {mlp_hidden}")
        self.backbone, self.feature_dim = backbone, int(feature_dim)
        d = self.feature_dim
        self.head = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, head_dim))
        self.mlp = nn.Sequential(nn.Linear(d, mlp_hidden), nn.ReLU(inplace=True), nn.Linear(mlp_hidden, 1))
        self.fc = nn.Linear(d, num_classes)

    def features(self, x):
        return self.backbone.features(x)

    def project(self, feat: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(feat), dim=1)

    def open_logit(self, feat: torch.Tensor) -> torch.Tensor:
        return self.mlp(feat).squeeze(1)


@NETWORKS.register("npos_resnet18_32x32")
def npos_resnet18_32x32(num_classes: int = 10, in_channels: int = 3, width: int = 64, head_dim: int = 128,
                        mlp_hidden: int = 128) -> NPOSNet:
    """NPOS ResNet-18 (32x32): 512-d penultimate at width 64 (8 * width in general)."""
    body = ResNet32x32((2, 2, 2, 2), in_channels, width)
    return NPOSNet(body, body.feature_dim, num_classes, head_dim, mlp_hidden)


@NETWORKS.register("resnet34_32x32")
class ResNet34_32x32(Classifier):
    """CIFAR ResNet-34 (3x3 stem, no max-pool, Kaiming init; the SupCon-style backbone NPOS and Dream-OOD
    use) with a linear classifier; features 8*width-d (512 at width 64)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 64):
        super().__init__()
        self.body = ResNet32x32((3, 4, 6, 3), in_channels, width)
        self.feature_dim = self.body.feature_dim
        self.fc = nn.Linear(self.feature_dim, num_classes)

    def features(self, x):
        return self.body.features(x)


@NETWORKS.register("npos_resnet34_32x32")
def npos_resnet34_32x32(num_classes: int = 100, in_channels: int = 3, width: int = 64, head_dim: int = 128,
                        mlp_hidden: int = 128) -> NPOSNet:
    """NPOS ResNet-34 (32x32), the paper's CIFAR-100 backbone."""
    body = ResNet32x32((3, 4, 6, 3), in_channels, width)
    return NPOSNet(body, body.feature_dim, num_classes, head_dim, mlp_hidden)


@NETWORKS.register("npos_net")
def npos_net(backbone: str = "resnet18_32x32", num_classes: int = 10, head_dim: int = 128,
             mlp_hidden: int = 128, **backbone_args) -> NPOSNet:
    """NPOS heads on any NETWORKS classifier (its ``features`` and ``feature_dim``), e.g. ``digits_cnn``."""
    body = NETWORKS.build({"name": backbone, "num_classes": num_classes, **backbone_args})
    if not hasattr(body, "features") or not hasattr(body, "feature_dim"):
        raise ValueError(f"backbone {backbone!r} has no features()/feature_dim")
    body.fc = nn.Identity()  # the backbone's own classifier is not used
    return NPOSNet(body, body.feature_dim, num_classes, head_dim, mlp_hidden)
