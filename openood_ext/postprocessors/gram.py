"""Gram-matrix deviations (Sastry & Oore, "Detecting Out-of-Distribution Examples with Gram Matrices",
ICML 2020), as OpenOOD v1.5's ``gram`` (row sums of p-th order Gram matrices, min/max per class and
layer, deviations normalised by held-out ID training deviations)."""

from __future__ import annotations

import numpy as np
import torch

from ..schema import NonNegativeInt, UnitFloat
from ..features import NetOutputs
from .base import Postprocessor
from .layer_features import LayerTaps, first_batch, iter_images, resolve_layers
from .registry import POSTPROCESSORS


def gram_features(t: torch.Tensor, powers) -> list[torch.Tensor]:
    """For each p: ``G_p = sign(S) |S|^(1/p)`` with ``S = rowsum((F^p)(F^p)^T)``, F = [B, C, HW];
    float64 [B, C] each (a [B, D] input is treated as D channels of one position)."""
    f = t.detach().double()
    f = f.reshape(f.shape[0], f.shape[1], -1)
    out = []
    for p in powers:
        fp = f.pow(p)
        s = (fp @ fp.transpose(1, 2)).sum(dim=2)
        out.append(s.sign() * s.abs().pow(1.0 / p))
    return out


def deviation(mins: torch.Tensor, maxs: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``sum_j relu(min_j - g_j) / |min_j + 1e-6| + relu(g_j - max_j) / |max_j + 1e-6|``, [B]."""
    return ((mins - g).clamp_min(0) / (mins + 1e-6).abs()).sum(dim=1) + \
        ((g - maxs).clamp_min(0) / (maxs + 1e-6).abs()).sum(dim=1)


@POSTPROCESSORS.register("gram")
class GramPostprocessor(Postprocessor):
    """Gram: conf = -sum_{l,p} dev_{l,p}(x) / n_l / MSP(x), deviations from class-wise Gram min/max; higher = more ID.

    Fit (ID training set, labels): per layer l, power p and class c the element-wise min and max of
    the Gram features over a random 90% of the class's samples; n_l = mean deviation (summed over
    powers) of the held-out 10% at layer l.

    Args:
        powers: Gram orders p (OpenOOD default [1, 2, 3, 4, 5]).
        layers: which layers (default ``conv_relu``: every Conv2d and ReLU module, as OpenOOD);
            ``stages``, module names or stage indices also work (see ``layer_features``).
        holdout: fraction of each class held out for the normalisers (0.1).
        seed: seed of the hold-out split.
    """

    needs_network = True

    def __init__(self, powers=(1, 2, 3, 4, 5), layers="conv_relu", holdout: UnitFloat = 0.1, seed: NonNegativeInt = 0):
        powers = [int(p) for p in powers]
        if not powers or min(powers) < 1:
            raise ValueError(f"gram: powers must be positive integers, got {powers}")
        if not 0 <= holdout < 1:
            raise ValueError(f"gram: holdout must be in [0, 1), got {holdout}")
        self.powers, self.holdout, self.seed = powers, float(holdout), int(seed)
        self.layers = layers if isinstance(layers, str) else list(layers)
        self.layer_names: list[str] | None = None
        self._mins = self._maxs = self._norm = None
        self.net = self.device = self.loaders = None

    def _taps(self) -> LayerTaps:
        return LayerTaps(self.net, self.layer_names, transform=lambda t: gram_features(t, self.powers))

    def _holdout_mask(self, labels: torch.Tensor) -> torch.Tensor:
        """True for the held-out samples: int(holdout * n_c) random samples of every class c."""
        gen = torch.Generator().manual_seed(self.seed)
        mask = torch.zeros(len(labels), dtype=torch.bool)
        for c in torch.unique(labels):
            idx = (labels == c).nonzero().flatten()
            mask[idx[torch.randperm(len(idx), generator=gen)[:int(self.holdout * len(idx))]]] = True
        return mask

    def _train_labels(self, train_outputs: NetOutputs | None, loader) -> torch.Tensor:
        if train_outputs is not None and train_outputs.labels is not None:
            return train_outputs.labels.long()
        return torch.cat([torch.as_tensor(b[1]).long() for b in loader if len(b[0])])

    def fit(self, train_outputs: NetOutputs | None = None, val_outputs: NetOutputs | None = None, **_):
        if self.net is None or self.loaders is None:
            raise RuntimeError("gram: attach_network(net, device, loaders) must be called before fit")
        self.net.eval()
        loader = self.loaders("id_train")
        self.layer_names = resolve_layers(self.net, self.layers, first_batch(loader).to(self.device))
        labels = self._train_labels(train_outputs, loader)
        held = self._holdout_mask(labels)
        mins: list | None = None
        maxs: list | None = None
        held_feats: list[list] = []  # per batch: [layer][power] float32 Gram features of held-out samples
        held_labels = []
        seen = 0
        with self._taps() as taps, torch.no_grad():
            for images, y in iter_images(loader, self.device, desc="gram fit"):
                num_classes = max(int(labels.max()) + 1, self.net(images).shape[1])
                feats = [[g.cpu() for g in layer] for layer in taps.pop()]
                if len(feats) != len(self.layer_names):
                    raise ValueError(f"gram: the hooked modules fired {len(feats)} times for "
                                     f"{len(self.layer_names)} layers (a module used twice?)")
                batch_held = held[seen:seen + len(y)]
                if len(batch_held) != len(y) or not torch.equal(labels[seen:seen + len(y)], y):
                    raise ValueError("gram: the id_train loader does not match the training outputs' labels")
                seen += len(y)
                if mins is None:
                    mins = [[torch.full((num_classes, g.shape[1]), float("inf"), dtype=torch.float64)
                             for g in layer] for layer in feats]
                    maxs = [[-m for m in layer] for layer in mins]
                fit_rows = ~batch_held
                for l, layer in enumerate(feats):
                    for p, g in enumerate(layer):
                        for c in torch.unique(y[fit_rows]):
                            rows = g[fit_rows & (y == c)]
                            mins[l][p][c] = torch.minimum(mins[l][p][c], rows.min(dim=0).values)
                            maxs[l][p][c] = torch.maximum(maxs[l][p][c], rows.max(dim=0).values)
                held_feats.append([[g[batch_held].float() for g in layer] for layer in feats])
                held_labels.append(y[batch_held])
        if seen != len(labels):
            raise ValueError("gram: the id_train loader does not match the training outputs' labels")
        self._mins, self._maxs = mins, maxs
        hy = torch.cat(held_labels)
        norms = []
        for l in range(len(self.layer_names)):
            if len(hy) == 0:
                norms.append(1.0)
                continue
            dev = sum(self._class_deviation(l, p, torch.cat([b[l][p] for b in held_feats]).double(), hy)
                      for p in range(len(self.powers)))
            n = float(dev.mean())
            norms.append(n if n > 0 else 1.0)  # no held-out deviation at this layer: leave it unscaled
        self._norm = norms
        return self

    def _class_deviation(self, l: int, p: int, g: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Deviation of each row of g from the min/max of its class (0 for classes never fitted)."""
        mins, maxs = self._mins[l][p][classes], self._maxs[l][p][classes]
        fitted = torch.isfinite(mins).all(dim=1)
        mins = torch.where(fitted[:, None], mins, g)
        maxs = torch.where(fitted[:, None], maxs, g)
        return deviation(mins, maxs, g)

    def score_loader(self, loader) -> np.ndarray:
        if self._norm is None:
            raise RuntimeError("gram: call fit() before scoring")
        self.net.eval()
        confs = []
        with self._taps() as taps, torch.no_grad():
            for images, _ in iter_images(loader, self.device, desc="gram"):
                logits = self.net(images).double().cpu()
                msp, preds = logits.softmax(dim=1).max(dim=1)
                total = torch.zeros(len(images), dtype=torch.float64)
                for l, layer in enumerate(taps.pop()):
                    for p, g in enumerate(layer):
                        total += self._class_deviation(l, p, g.cpu(), preds) / self._norm[l]
                confs.append(-total / msp)
        return torch.cat(confs).numpy() if confs else np.zeros(0)
