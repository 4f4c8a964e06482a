"""Dream-OOD's ID feature model (``dream-ood`` ``scripts/pretrain_cifar100.py``): a backbone, a linear
projection to the text-embedding space and logits = cos(proj(f), a_c) / ``temperature`` against fixed
class anchors a_c (the SD text encoder's class-token embeddings, :func:`openood_ext.synthesizers.
dream_features.write_anchors`). Trained with plain cross-entropy (trainer ``base``); its projected
features [B, D] (``return_feature=True``) are what the outlier sampler perturbs.

``anchors``: a file holding a [C, D] tensor (or {"anchors": tensor}); it is copied into a buffer, so the
checkpoint is self-contained. Published setting: ResNet-34 (CIFAR), Linear(512 -> 768), temperature 0.1,
200 epochs, SGD 0.1, weight decay 5e-4, cosine, batch 256. Backbones here: any NETWORKS classifier with
``features(x)`` and ``feature_dim`` (``resnet18_32x32`` by default, ``width`` passed on).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .registry import NETWORKS
from .small_cnn import Classifier


@NETWORKS.register("anchor_cosine")
class AnchorCosine(Classifier):
    def __init__(self, num_classes: int = 10, anchors: str = "", backbone: str = "resnet18_32x32",
                 width: int = 64, in_channels: int = 3, temperature: float = 0.1):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        path = Path(anchors)
        if not path.is_file():
            raise ConfigError(f"network.anchors: {anchors!r} is not a file (write it with "
                              f"python -m openood_ext.pipelines.dream_features anchors ...)")
        a = torch.load(path, map_location="cpu", weights_only=True)
        a = a["anchors"] if isinstance(a, dict) else a
        if a.ndim != 2 or a.shape[0] != num_classes:
            raise ConfigError(f"network.anchors: {path} holds {tuple(a.shape)}, expected [{num_classes}, D]")
        self.body = NETWORKS.build({"name": backbone, "num_classes": num_classes, "width": width,
                                    "in_channels": in_channels})
        self.proj = nn.Linear(self.body.feature_dim, a.shape[1])
        self.register_buffer("anchors", a.float().clone())
        self.temperature, self.feature_dim = float(temperature), int(a.shape[1])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.body.features(x))

    def forward(self, x: torch.Tensor, return_feature: bool = False):
        feat = self.features(x)
        logits = F.normalize(feat, dim=1) @ F.normalize(self.anchors, dim=1).T / self.temperature
        return (logits, feat) if return_feature else logits

    # no last linear layer (logits are cosines to fixed anchors): feature extraction then records no fc
    get_fc_layer = None
