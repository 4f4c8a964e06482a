"""VMDLS networks (Dinari & Freifeld, UAI 2022): an encoder exposing intermediate layers, then two
linear heads to a latent mean and log-variance. No decoder (the published code trains none).

Encoders (``encoder:``) return ``(pooled, out)``: ``pooled`` is the list of the three global-average-pooled
intermediate feature maps l1, l2, l3 [B, C_i] and ``out`` the flat encoder output [B, enc_out_dim]:

* ``mnist_conv``: five 3x3 conv layers of 100 channels with ReLUs and three 2x2 max-pools, then
  ``Linear(100*s*s -> 500)`` with no activation, s = image_size // 8 (28 -> 3, as published: 900 -> 500;
  the 8x8 digits give s = 1). l1 = second conv *before* its ReLU, l2 = after the first max-pool, l3 =
  after the third conv's ReLU (as ``MnistConvEncoder.get_layer_output``); 100/100/100-d.
* ``resnet18_32x32``: the CIFAR ResNet-18 of :mod:`.resnet` (3x3 stem, no max-pool; ``width`` scales it,
  64 = standard); l1..l3 = pooled ``layer1..layer3`` (64/128/256-d at width 64), out = pooled ``layer4``.
* ``vgg`` (1024-d out; l1..l3 128/256/256-d before their ReLU), ``densenet`` (BC-100, growth 12; 342-d
  out; 108/150/342-d, l3 == out) and ``wide_resnet`` (28-10; 640-d out; 160/320/640-d, l3 == out as
  published): :mod:`.vmdls_backbones`, options through ``encoder_args``.

Networks registered here:

* ``vmdls``: encoder + ``fc_mu``/``fc_var`` (log-variance: sigma = exp(logvar / 2)). ``forward(x,
  return_feature)`` gives logits = minus the squared distance of mu to the training class means kept in
  the ``class_means`` buffer (the trainer updates it each epoch; measured on L2-normalised vectors when
  ``distance: normalized``), and features = mu [B, latent_dim], so the classifier-based postprocessors
  and the accuracy still work. :meth:`VMDLSNet.ensemble` gives the VMDLS test feature
  [l1, l2, l3, encoder output, mu].
* ``mnist_conv``: the same ``mnist_conv`` encoder with a linear classifier on its 500-d output, for a
  cross-entropy baseline of the same size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .registry import NETWORKS
from .resnet import ResNet18_32x32
from .small_cnn import Classifier
from .vmdls_backbones import DenseNetEncoder, VGGEncoder, WideResNetEncoder

DISTANCES = ("normalized", "euclidean")


def _gap(t: torch.Tensor) -> torch.Tensor:
    return t.mean(dim=(2, 3))


class MnistConvEncoder(nn.Module):
    """The published ``mnist-conv`` encoder, for square inputs of side ``image_size`` >= 8."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, channels: int = 100, out_dim: int = 500):
        super().__init__()
        side = image_size // 8
        if side < 1:
            raise ConfigError(f"network.image_size: mnist_conv needs images of at least 8x8, got {image_size}")
        c = channels
        self.conv1, self.conv2 = nn.Conv2d(in_channels, c, 3, 1, 1), nn.Conv2d(c, c, 3, 1, 1)
        self.conv3, self.conv4 = nn.Conv2d(c, c, 3, 1, 1), nn.Conv2d(c, c, 3, 1, 1)
        self.conv5 = nn.Conv2d(c, c, 3, 1, 1)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc = nn.Linear(c * side * side, out_dim)
        self.out_dim, self.pooled_dims = out_dim, (c, c, c)

    def forward(self, x: torch.Tensor):
        h = F.relu(self.conv1(x))
        pre = self.conv2(h)
        l1 = _gap(pre)
        h = self.pool(F.relu(pre))
        l2 = _gap(h)
        h = F.relu(self.conv3(h))
        l3 = _gap(h)
        h = self.pool(F.relu(self.conv4(h)))
        h = self.pool(F.relu(self.conv5(h)))
        return [l1, l2, l3], self.fc(h.flatten(1))

    def first_layer(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled l1 only (for the reconstruction distance)."""
        return _gap(self.conv2(F.relu(self.conv1(x))))


class ResNet18Encoder(nn.Module):
    """CIFAR ResNet-18 trunk without its classifier; out = pooled layer4 (8*width-d)."""

    def __init__(self, in_channels: int = 3, width: int = 64):
        super().__init__()
        trunk = ResNet18_32x32(num_classes=1, in_channels=in_channels, width=width)
        self.conv1, self.bn1 = trunk.conv1, trunk.bn1
        self.layer1, self.layer2, self.layer3, self.layer4 = trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4
        self.out_dim, self.pooled_dims = 8 * width, (width, 2 * width, 4 * width)

    def forward(self, x: torch.Tensor):
        h1 = self.layer1(F.relu(self.bn1(self.conv1(x))))
        h2 = self.layer2(h1)
        h3 = self.layer3(h2)
        return [_gap(h1), _gap(h2), _gap(h3)], _gap(self.layer4(h3))

    def first_layer(self, x: torch.Tensor) -> torch.Tensor:
        return _gap(self.layer1(F.relu(self.bn1(self.conv1(x)))))


ENCODERS = {"mnist_conv": MnistConvEncoder, "resnet18_32x32": ResNet18Encoder, "vgg": VGGEncoder,
            "densenet": DenseNetEncoder, "wide_resnet": WideResNetEncoder}


def build_encoder(name: str, in_channels: int, image_size: int, width: int,
                  encoder_args: dict | None = None) -> nn.Module:
    """The encoder ``name``; ``encoder_args`` are extra keyword arguments of the larger encoders
    (:mod:`.vmdls_backbones`: densenet ``depth, growth, reduction, init``; wide_resnet ``depth, widen,
    dropout, mc_dropout, layers``; vgg ``hidden``)."""
    args = dict(encoder_args or {})
    if name in ("mnist_conv", "resnet18_32x32") and args:
        raise ConfigError(f"network.encoder_args: encoder {name!r} takes none, got {sorted(args)}")
    if name == "mnist_conv":
        return MnistConvEncoder(in_channels, image_size)
    if name == "resnet18_32x32":
        return ResNet18Encoder(in_channels, width)
    if name not in ENCODERS:
        raise ConfigError(f"network.encoder: expected one of {', '.join(ENCODERS)}, got {name!r}")
    if name == "vgg":
        args.setdefault("image_size", image_size)
    try:
        return ENCODERS[name](in_channels=in_channels, **args)
    except TypeError as exc:
        raise ConfigError(f"network.encoder_args: bad arguments for encoder {name!r}: {exc}") from None


def pairwise_sq_distances(a: torch.Tensor, b: torch.Tensor, distance: str) -> torch.Tensor:
    """[N, M] squared distances between rows of a and b (rows L2-normalised first when ``normalized``)."""
    if distance == "normalized":
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    return (a[:, None, :] - b[None, :, :]).pow(2).sum(-1)


@NETWORKS.register("vmdls")
class VMDLSNet(nn.Module):
    """Encoder + latent heads (see the module docstring).

    Args:
        encoder: ``mnist_conv``, ``resnet18_32x32``, ``vgg``, ``densenet`` (BC-100, growth 12) or
            ``wide_resnet`` (28-10) (the last three: :mod:`.vmdls_backbones`).
        num_classes: K (size of the ``class_means`` buffer).
        in_channels, image_size: input shape (image_size matters for ``mnist_conv`` only).
        latent_dim: 32 in the paper (64 for CIFAR-100).
        width: ResNet-18 width (64 = standard).
        distance: ``normalized`` | ``euclidean``: how ``forward``'s logits measure distance to the class means.
        encoder_args: extra keyword arguments of the vgg/densenet/wide_resnet encoders (published quirks
            behind switches: densenet ``init: published``, wide_resnet ``mc_dropout``, ``layers``).
    """

    def __init__(self, encoder: str = "mnist_conv", num_classes: int = 10, in_channels: int = 1,
                 image_size: int = 28, latent_dim: int = 32, width: int = 64, distance: str = "normalized",
                 encoder_args: dict | None = None):
        super().__init__()
        if latent_dim < 1:
            raise ConfigError(f"network.latent_dim: expected an integer >= 1, got {latent_dim}")
        if distance not in DISTANCES:
            raise ConfigError(f"network.distance: expected one of {', '.join(DISTANCES)}, got {distance!r}")
        self.encoder_name, self.distance = encoder, distance
        self.encoder = build_encoder(encoder, in_channels, image_size, width, encoder_args)
        self.fc_mu = nn.Linear(self.encoder.out_dim, latent_dim)
        self.fc_var = nn.Linear(self.encoder.out_dim, latent_dim)
        self.latent_dim = latent_dim
        self.feature_dim = latent_dim
        self.ensemble_dim = sum(self.encoder.pooled_dims) + self.encoder.out_dim + latent_dim
        self.register_buffer("class_means", torch.zeros(num_classes, latent_dim))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar), each [B, latent_dim]."""
        _, out = self.encoder(x)
        return self.fc_mu(out), self.fc_var(out)

    @property
    def separate_draws(self) -> bool:
        """True when the encoder's test-time features are random and each ensemble piece takes its own pass."""
        return bool(getattr(self.encoder, "separate_draws", False))

    def ensemble(self, x: torch.Tensor) -> torch.Tensor:
        """The VMDLS test feature [l1, l2, l3, encoder output, mu], [B, ensemble_dim]: one pass, or with
        :attr:`separate_draws` the published five (mu, then ``layer_output(x, 1..4)``, in that order)."""
        if self.separate_draws:
            mu = self.fc_mu(self.encoder(x)[1])
            return torch.cat([self.encoder.layer_output(x, i) for i in range(1, 5)] + [mu], dim=1)
        pooled, out = self.encoder(x)
        return torch.cat([*pooled, out, self.fc_mu(out)], dim=1)

    def first_layer(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled l1 [B, C_1], where the reconstruction distance is measured."""
        return self.encoder.first_layer(x)

    def forward(self, x: torch.Tensor, return_feature: bool = False):
        mu, _ = self.encode(x)
        logits = -pairwise_sq_distances(mu, self.class_means.to(mu.dtype), self.distance)
        return (logits, mu) if return_feature else logits


@NETWORKS.register("mnist_conv")
class MnistConvClassifier(Classifier):
    """The ``mnist_conv`` encoder with a linear classifier on its 500-d output (cross-entropy baseline)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28):
        super().__init__()
        self.encoder = MnistConvEncoder(in_channels, image_size)
        self.feature_dim = self.encoder.out_dim
        self.fc = nn.Linear(self.feature_dim, num_classes)

    def features(self, x):
        return self.encoder(x)[1]
