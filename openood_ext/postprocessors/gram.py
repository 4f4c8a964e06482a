"""Gram-matrix deviations (Sastry & Oore, "Detecting Out-of-Distribution Examples with Gram Matrices",
ICML 2020), as OpenOOD v1.5's ``gram`` (row sums of p-th order Gram matrices, min/max per class and
layer, deviations normalised by held-out ID training deviations).

Gram reads intermediate layers only, without gradients, so it works entirely from the shared forward
pass's layer taps (:mod:`openood_ext.features`): the fit is a streaming per-class min/max over the
id_train pass, scoring a per-sample deviation computed in each split's pass. Only the [B, C] Gram row
sums of a batch are ever formed, never kept feature maps.
"""

from __future__ import annotations

import numpy as np
import torch

from ..features import NetOutputs, Tap, extract_outputs
from ..schema import NonNegativeInt, UnitFloat
from .base import Postprocessor
from .gram_rowsums import gram_row_sums
from .layer_features import first_batch, resolve_layers
from .registry import POSTPROCESSORS


def gram_features(t: torch.Tensor, powers, backend: str = "auto") -> list[torch.Tensor]:
    """For each p: ``G_p = sign(S) |S|^(1/p)`` with ``S = rowsum((F^p)(F^p)^T)``, F = [B, C, HW]; float32
    [B, C] each, on t's device (a [B, D] input is treated as D channels of one position): the fit's
    min/max and the scoring stay there, so a GPU pass copies no tapped layer to the host per batch.

    S is computed in float32 like OpenOOD (relative difference to a float64 computation ~1e-6) by
    :func:`~.gram_rowsums.gram_row_sums` (``backend``: see there); the root is taken in float64.
    """
    sums = gram_row_sums(t, powers, backend)
    return [s if p == 1 else _signed_root(s.double(), p) for s, p in zip(sums, powers)]  # p = 1: sign(S)|S| is S


def _signed_root(s: torch.Tensor, p: int) -> torch.Tensor:
    """float32 ``sign(s) |s|^(1/p)`` of a float64 tensor."""
    return (s.sign() * s.abs().pow(1.0 / p)).float()


def deviation(mins: torch.Tensor, maxs: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``sum_j relu(min_j - g_j) / |min_j + 1e-6| + relu(g_j - max_j) / |max_j + 1e-6|`` over the last
    dimension j, float64 ([B, C] -> [B], or [P, B, C] -> [P, B])."""
    mins, maxs, g = mins.double(), maxs.double(), g.double()
    return ((mins - g).clamp_min(0) / (mins + 1e-6).abs()).sum(dim=-1) + \
        ((g - maxs).clamp_min(0) / (maxs + 1e-6).abs()).sum(dim=-1)


@POSTPROCESSORS.register("gram")
class GramPostprocessor(Postprocessor):
    """Gram: conf = -sum_{l,p} dev_{l,p}(x) / n_l / MSP(x), deviations from class-wise Gram min/max; higher = more ID.

    Fit (ID training set, labels): per layer l, power p and class c the element-wise min and max of
    the Gram features over the training samples not held out; n_l = mean deviation (summed over
    powers) of the held-out samples at layer l. Scoring uses the predicted class's min/max (a class
    never seen in training contributes no deviation).

    Args:
        powers: Gram orders p (OpenOOD default [1, 2, 3, 4, 5]).
        layers: which layers (default ``conv_relu``: every Conv2d and ReLU module, as OpenOOD);
            ``stages``, module names or stage indices also work (see ``layer_features``).
        holdout: the held-out fraction (0.1, as OpenOOD). Each training sample is held out
            independently with this probability from a seeded stream, so the fit streams over the
            pass; OpenOOD holds out exactly int(0.1 n_c) samples of each class with an unseeded
            ``random.sample`` (its AUROC moves by ~0.1 point from run to run because of it).
            ``holdout: 0`` fits min/max on every sample and leaves the layers unnormalised (n_l = 1).
        seed: seed of the hold-out stream.
    Works from the shared forward pass (``uses_taps``); ``attach_network`` + ``fit``/``score_loader``
    run the same streams over loaders (one pass each) for use outside the pipeline.
    """

    uses_taps = True

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

    # ------------------------------------------------------------------ taps
    def _taps(self) -> list[Tap]:
        key = "gram:" + ",".join(map(str, self.powers))
        return [Tap(name, key, lambda t: gram_features(t, self.powers)) for name in self.layer_names]

    def _holdout_mask(self, labels: torch.Tensor) -> torch.Tensor:
        """True for the held-out samples of a training split of ``len(labels)`` samples, in order."""
        return _HoldoutStream(self.holdout, self.seed).take(len(labels))

    def fit_taps(self, net: torch.nn.Module, example: torch.Tensor) -> _GramFit:
        """A consumer fitting this instance from the id_train pass (see :mod:`openood_ext.features`)."""
        self.layer_names = resolve_layers(net, self.layers, example)
        return _GramFit(self)

    def score_taps(self) -> _GramScore:
        """A consumer whose ``finish()`` is the split's confidences, float64 [N]."""
        if self._norm is None:
            raise RuntimeError("gram: call fit() before scoring")
        return _GramScore(self)

    # ------------------------------------------------------------------ loader fallback
    def fit(self, train_outputs: NetOutputs | None = None, val_outputs: NetOutputs | None = None, **_):
        if self._norm is not None:  # fitted from the shared pass
            return self
        if self.net is None or self.loaders is None:
            raise RuntimeError("gram: fit from the shared forward pass (fit_taps), or attach_network(net, "
                               "device, loaders) first")
        loader = self.loaders("id_train")
        consumer = self.fit_taps(self.net, first_batch(loader).to(self.device))
        extract_outputs(self.net, loader, self.device, desc="gram fit", consumers=[consumer])
        return self

    def score_loader(self, loader) -> np.ndarray:
        consumer = self.score_taps()
        return extract_outputs(self.net, loader, self.device, desc="gram", consumers=[consumer]).tap_results[0]

    def score(self, outputs: NetOutputs) -> np.ndarray:
        raise RuntimeError("gram scores from the shared forward pass's layer taps (score_taps), or "
                           "score_loader after attach_network, not from cached outputs")

    def _layer_deviation(self, l: int, g: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Deviation of each sample's Gram features at layer l from the min/max of its class (0 for classes
        never fitted), every power at once: g [P, B, C] float32, classes [B] -> float64 [P, B]."""
        mins, maxs = self._mins[l], self._maxs[l]  # [P, K, C] each
        known = classes < mins.shape[1]
        idx = torch.where(known, classes, torch.zeros_like(classes))
        mins, maxs = mins[:, idx], maxs[:, idx]
        fitted = (known & torch.isfinite(mins).all(dim=2))[..., None]
        return deviation(torch.where(fitted, mins, g), torch.where(fitted, maxs, g), g)


class _HoldoutStream:
    """Independent Bernoulli(holdout) draws per sample from a seeded stream, in sample order."""

    def __init__(self, holdout: float, seed: int):
        self.holdout, self.rng = holdout, np.random.default_rng(seed)

    def take(self, n: int) -> torch.Tensor:
        return torch.from_numpy(self.rng.random(n) < self.holdout)


class _GramFit:
    """Streaming fit: per-class min/max of the non-held-out samples, Gram features of the held-out ones."""

    def __init__(self, pp: GramPostprocessor):
        self.pp, self.taps = pp, pp._taps()
        self.held = _HoldoutStream(pp.holdout, pp.seed)
        self.mins = self.maxs = None
        self.held_feats: list = []  # per batch: [layer][power] float32 [n_held, C]
        self.held_labels: list = []

    def update(self, reduced, logits, labels):
        feats = [reduced[t.key] for t in self.taps]
        labels = labels.long().cpu()
        dev = feats[0][0].device  # the features stay where the pass computed them
        if self.mins is None:
            k = max(int(labels.max()) + 1, logits.shape[1])
            self.mins = [[torch.full((k, g.shape[1]), float("inf"), device=dev) for g in layer] for layer in feats]
            self.maxs = [[-m for m in layer] for layer in self.mins]
        held = self.held.take(len(labels))
        # row indices chosen on the host (labels and the hold-out stream are host data), then moved once
        fit_rows = (~held & (labels >= 0)).nonzero().squeeze(1)
        keep = (held & (labels >= 0)).nonzero().squeeze(1)
        fit_dev, keep_dev = fit_rows.to(dev, non_blocking=True), keep.to(dev, non_blocking=True)
        y = labels[fit_rows].to(dev, non_blocking=True)
        for l, layer in enumerate(feats):
            for p, g in enumerate(layer):
                g = g.index_select(0, fit_dev)
                idx = y[:, None].expand_as(g)
                self.mins[l][p].scatter_reduce_(0, idx, g, "amin")
                self.maxs[l][p].scatter_reduce_(0, idx, g, "amax")
        self.held_feats.append([[g.index_select(0, keep_dev) for g in layer] for layer in feats])
        self.held_labels.append(labels[keep].to(dev, non_blocking=True))

    def finish(self) -> GramPostprocessor:
        pp = self.pp
        if self.mins is None:
            raise ValueError("gram: the id_train pass had no samples")
        # per layer, its powers' [K, C] bounds stacked once: [P, K, C] (scoring reads them per batch)
        pp._mins, pp._maxs = ([torch.stack(layer) for layer in bounds] for bounds in (self.mins, self.maxs))
        hy = torch.cat(self.held_labels)
        norms = []
        for l in range(len(pp.layer_names)):
            if len(hy) == 0:
                norms.append(1.0)
                continue
            held = torch.stack([torch.cat([b[l][p] for b in self.held_feats]) for p in range(len(pp.powers))])
            dev = sum(pp._layer_deviation(l, held, hy))  # power by power, in order
            n = float(dev.mean())
            norms.append(n if n > 0 else 1.0)  # no held-out deviation at this layer: leave it unscaled
        pp._norm = norms
        return pp


class _GramScore:
    """Streaming scoring: -sum_l sum_p dev / n_l / MSP per sample, deviations from the predicted class."""

    def __init__(self, pp: GramPostprocessor):
        self.pp, self.taps, self.confs = pp, pp._taps(), []

    def update(self, reduced, logits, labels):
        dev = reduced[self.taps[0].key][0].device
        msp, preds = logits.double().softmax(dim=1).max(dim=1)
        preds = preds.to(dev, non_blocking=True)
        total = torch.zeros(len(logits), dtype=torch.float64, device=dev)
        for l, t in enumerate(self.taps):
            for dev_p in self.pp._layer_deviation(l, torch.stack(reduced[t.key]), preds):
                total += dev_p / self.pp._norm[l]  # power by power, in order
        self.confs.append(-total / msp.to(dev, non_blocking=True))  # on the device until the split ends

    def finish(self) -> np.ndarray:
        return torch.cat(self.confs).cpu().numpy() if self.confs else np.zeros(0)
