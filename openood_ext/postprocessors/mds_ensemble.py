"""Mahalanobis score with input preprocessing and a layer ensemble (Lee et al., "A Simple Unified
Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018), as
OpenOOD v1.5's ``mds_ensemble``."""

from __future__ import annotations

import numpy as np
import torch

from ..features import NetOutputs
from .base import Postprocessor
from .common import ClassGaussians, class_gaussians, mahalanobis_sq
from .layer_features import (LayerTaps, first_batch, input_std, iter_images, resolve_layers,
                             signed_input_step)
from .registry import POSTPROCESSORS

_FEATURE_TYPES = ("mean", "stat", "flat")


def reduce_feature_map(t: torch.Tensor, feature_type: str) -> torch.Tensor:
    """[B, C, H, W] (or [B, D]) -> [B, *]: spatial ``mean``, ``stat`` (mean and unbiased variance;
    mean only for 1x1 maps) or ``flat``."""
    if t.ndim == 2:
        return t
    flat = t.reshape(t.shape[0], t.shape[1], -1)
    if feature_type == "flat":
        return t.reshape(t.shape[0], -1)
    if feature_type == "mean" or flat.shape[2] == 1:
        return flat.mean(dim=2)
    return torch.cat([flat.mean(dim=2), flat.var(dim=2)], dim=1)


@POSTPROCESSORS.register("mds_ensemble", aliases=["mahalanobis_ensemble"])
class MDSEnsemblePostprocessor(Postprocessor):
    """MDSEns: conf = sum_l alpha_l max_c -MD_{l,c}(x~)/2, x~ = x - eps sign(grad_x min_c MD_{l,c}) / std; higher = more ID.

    MD_{l,c} is the squared Mahalanobis distance of layer l's pooled feature map to class c's mean
    (shared covariance per layer, fitted on the ID training set with labels).

    Args:
        noise: eps, input-perturbation magnitude in pixel units (OpenOOD default 0.0014).
        layers: which layers (see :func:`layer_features.resolve_layers`): indices into the detected
            stage outputs (default ``[0]``, the first stage, as OpenOOD's single-layer default),
            ``stages`` for all of them, or module names.
        feature_type: ``mean`` (default), ``stat`` or ``flat`` pooling of each feature map.
        alpha: per-layer weights (default 1 for every layer). OpenOOD's optional logistic-regression
            fit of alpha needs an OOD validation set, which this contract does not provide.
        input_std: per-channel input std (default: from the loader's Normalize, else 1). OpenOOD
            hard-codes 0.5 here; the loader's true std makes eps a pixel-unit step as in ODIN.
    """

    needs_network = True

    def __init__(self, noise: float = 0.0014, layers=(0,), feature_type: str = "mean", alpha=None,
                 input_std=None):
        if noise < 0:
            raise ValueError(f"mds_ensemble: noise must be >= 0, got {noise}")
        if feature_type not in _FEATURE_TYPES:
            raise ValueError(f"mds_ensemble: feature_type must be one of {_FEATURE_TYPES}, got {feature_type!r}")
        self.noise, self.feature_type = float(noise), feature_type
        self.layers = layers if isinstance(layers, str) else list(layers)
        self.alpha = None if alpha is None else [float(a) for a in alpha]
        self.input_std = input_std
        self.layer_names: list[str] | None = None
        self._gauss: list[ClassGaussians] = []
        self.net = self.device = self.loaders = None

    def _reduce(self, t: torch.Tensor) -> torch.Tensor:
        return reduce_feature_map(t, self.feature_type)

    def fit(self, train_outputs: NetOutputs | None = None, val_outputs: NetOutputs | None = None, **_):
        if self.net is None or self.loaders is None:
            raise RuntimeError("mds_ensemble: attach_network(net, device, loaders) must be called before fit")
        self.net.eval()
        loader = self.loaders("id_train")
        self.layer_names = resolve_layers(self.net, self.layers, first_batch(loader).to(self.device))
        if self.alpha is not None and len(self.alpha) != len(self.layer_names):
            raise ValueError(f"mds_ensemble: {len(self.alpha)} alpha weights for {len(self.layer_names)} "
                             f"layers {self.layer_names}")
        feats: list[list[torch.Tensor]] = [[] for _ in self.layer_names]
        labels = []
        with LayerTaps(self.net, self.layer_names, transform=self._reduce) as taps, torch.no_grad():
            for images, y in iter_images(loader, self.device, desc="mds_ensemble fit"):
                self.net(images)
                for store, f in zip(feats, taps.pop()):
                    store.append(f.double().cpu())
                labels.append(y)
        y = torch.cat(labels)
        self._gauss = [class_gaussians(torch.cat(f), y, "mds_ensemble") for f in feats]
        return self

    def _layer_scores(self, images: torch.Tensor, layer: int, std: torch.Tensor) -> torch.Tensor:
        """max_c -1/2 MD_c of one layer after the input step, float64 [B]."""
        gauss = self._gauss[layer]
        name = [self.layer_names[layer]]
        x = images.detach().clone().requires_grad_(True)
        with LayerTaps(self.net, name, transform=self._reduce, clone=True) as taps:
            self.net(x)
            feat = taps.pop()[0].double()
        d2 = mahalanobis_sq(feat, gauss.means.to(feat.device), gauss.precision.to(feat.device))
        nearest = d2.detach().argmin(dim=1)
        loss = 0.5 * d2.gather(1, nearest[:, None]).mean()
        (grad,) = torch.autograd.grad(loss, x)
        perturbed = signed_input_step(x, grad, std, self.noise)
        with LayerTaps(self.net, name, transform=self._reduce) as taps, torch.no_grad():
            self.net(perturbed)
            feat = taps.pop()[0].double()
        return (-0.5 * mahalanobis_sq(feat, gauss.means.to(feat.device), gauss.precision.to(feat.device))
                ).max(dim=1).values.cpu()

    def score_loader(self, loader) -> np.ndarray:
        if not self._gauss:
            raise RuntimeError("mds_ensemble: call fit() before scoring")
        self.net.eval()
        alpha = self.alpha or [1.0] * len(self.layer_names)
        std, confs = None, []
        for images, _ in iter_images(loader, self.device, desc="mds_ensemble"):
            if std is None:
                std = input_std(loader, images.shape[1], self.input_std)
            conf = sum(a * self._layer_scores(images, l, std) for l, a in enumerate(alpha))
            confs.append(conf)
        return torch.cat(confs).numpy() if confs else np.zeros(0)
