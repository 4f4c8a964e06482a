"""EOE's small CNNs (Liznerski et al., TMLR 2022, "Exposing Outlier Exposure"; ``liznerski/eoe``
``src/eoe/models/cnn.py``).

* ``eoe_cnn32`` (CIFAR-10, 3x32x32): three [conv5 (pad 2) - BN(eps 1e-4) - LeakyReLU - maxpool2] blocks
  with 32/64/128 channels, FC 2048->512 - BN1d - LeakyReLU, FC 512->``rep_dim`` (256).
* ``eoe_cnn28`` (Fashion-MNIST, 1x28x28): two blocks 16/32 channels, FC 1568->64 - BN1d - LeakyReLU,
  FC 64->``rep_dim`` (32).

``forward(x)`` returns the representation [B, rep_dim]; with ``clf: true`` (the BCE/focal objectives)
a Linear(rep_dim -> 1) head is appended and ``forward`` returns the logit [B, 1]
(``forward(x, return_feature=True)`` -> (output, representation)). ``bias`` (default False, the class
default of the published code) switches the conv/linear biases and the BN affine parameters together.
EOE's constructors apply xavier-normal inits, but every class x seed run calls ``reset_parameters`` on
all modules, so the published runs train from PyTorch's default init: that is our default;
``xavier_init: true`` applies the constructor inits instead.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .registry import NETWORKS

_GAIN = nn.init.calculate_gain("leaky_relu")


class EOECNN(nn.Module):
    """Shared body: conv blocks, FC - BN1d - LeakyReLU, FC to ``rep_dim``, optional 1-logit head."""

    def __init__(self, in_channels: int, image_size: int, channels: list[int], hidden: int, rep_dim: int,
                 bias: bool, clf: bool, xavier_init: bool):
        super().__init__()
        if rep_dim < 1:
            raise ConfigError(f"network.rep_dim: expected an integer >= 1, got {rep_dim}")
        if in_channels not in (1, 3):
            raise ConfigError(f"network.in_channels: expected 1 or 3, got {in_channels}")
        layers, cin = [], in_channels
        for cout in channels:
            layers += [nn.Conv2d(cin, cout, 5, padding=2, bias=bias), nn.BatchNorm2d(cout, eps=1e-4, affine=bias),
                       nn.LeakyReLU(), nn.MaxPool2d(2, 2)]
            cin = cout
        self.image_size, self.in_channels = image_size, in_channels
        side = image_size // 2 ** len(channels)
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.fc1 = nn.Linear(cin * side * side, hidden, bias=bias)
        self.bn1 = nn.BatchNorm1d(hidden, eps=1e-4, affine=bias)
        self.act = nn.LeakyReLU()
        self.fc2 = nn.Linear(hidden, rep_dim, bias=bias)
        self.rep_dim, self.feature_dim, self.clf = rep_dim, rep_dim, bool(clf)
        self.linear = nn.Linear(rep_dim, 1) if clf else None
        if xavier_init:
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)) and m is not self.linear:
                    nn.init.xavier_normal_(m.weight, gain=1.0 if m is self.fc2 else _GAIN)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-3:] != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(f"{type(self).__name__}: expected inputs [B, {self.in_channels}, {self.image_size}, "
                             f"{self.image_size}], got {tuple(x.shape)}")
        return self.fc2(self.act(self.bn1(self.fc1(self.body(x)))))

    def forward(self, x: torch.Tensor, return_feature: bool = False):
        rep = self.features(x)
        out = self.linear(rep) if self.linear is not None else rep
        return (out, rep) if return_feature else out

    def get_fc_layer(self) -> nn.Linear:
        return self.linear if self.linear is not None else self.fc2


@NETWORKS.register("eoe_cnn32", aliases=["EOE_CNN32"])
class EOECNN32(EOECNN):
    """EOE's CNN32 (see the module doc): [B, in_channels, 32, 32] -> [B, rep_dim] (or [B, 1] with clf)."""

    def __init__(self, in_channels: int = 3, rep_dim: int = 256, bias: bool = False, clf: bool = False,
                 xavier_init: bool = False):
        super().__init__(in_channels, 32, [32, 64, 128], 512, rep_dim, bias, clf, xavier_init)


@NETWORKS.register("eoe_cnn28", aliases=["EOE_CNN28"])
class EOECNN28(EOECNN):
    """EOE's CNN28 (see the module doc): [B, in_channels, 28, 28] -> [B, rep_dim] (or [B, 1] with clf)."""

    def __init__(self, in_channels: int = 1, rep_dim: int = 32, bias: bool = False, clf: bool = False,
                 xavier_init: bool = False):
        super().__init__(in_channels, 28, [16, 32], 64, rep_dim, bias, clf, xavier_init)
