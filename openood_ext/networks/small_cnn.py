"""Small convolutional classifiers for low-resolution images (digits, MNIST-like data)."""

from __future__ import annotations

import torch
from torch import nn

from ..schema import Probability
from .registry import NETWORKS


class Classifier(nn.Module):
    """Base of every classifier here: ``forward(x, return_feature=False)``.

    Returns logits [B, num_classes], or ``(logits, features)`` with the penultimate features [B, D]
    when ``return_feature`` is True. ``get_fc_layer()`` returns the last linear layer.
    """

    feature_dim: int

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, return_feature: bool = False):
        feat = self.features(x)
        logits = self.fc(feat)
        return (logits, feat) if return_feature else logits

    def get_fc_layer(self) -> nn.Linear:
        return self.fc


@NETWORKS.register("digits_cnn")
class DigitsCNN(Classifier):
    """Three-conv CNN for 8x8 inputs (the embedded digits benchmark); features are 4 * width-d.

    ``dropout`` > 0 adds an ``nn.Dropout`` on the pooled features before ``fc`` (for MC dropout; the
    default 0 adds no module, so weights and outputs are those of the network without the option).
    """

    def __init__(self, num_classes: int = 6, in_channels: int = 1, width: int = 32, dropout: Probability = 0.0):
        super().__init__()
        self.feature_dim = 4 * width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.BatchNorm2d(4 * width), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        if dropout > 0:
            self.body.append(nn.Dropout(dropout))
        self.fc = nn.Linear(self.feature_dim, num_classes)

    def features(self, x):
        return self.body(x)


@NETWORKS.register("lenet")
class LeNet(Classifier):
    """LeNet-5 style network for 28x28/32x32 inputs, as used for MNIST in OpenOOD; features are 84-d."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.feature_dim = 84
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(16, 120, 5), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(120, 84), nn.ReLU(inplace=True))
        self.fc = nn.Linear(self.feature_dim, num_classes)

    def features(self, x):
        return self.body(x)
