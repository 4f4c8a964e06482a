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


def gram_features(t: torch.Tensor, powers, backend: str = "auto") -> torch.Tensor:
    """For each p: ``G_p = sign(S) |S|^(1/p)`` with ``S = rowsum((F^p)(F^p)^T)``, F = [B, C, HW]; float32
    [P, B, C] on t's device (a [B, D] input is treated as D channels of one position): the fit's
    min/max and the scoring stay there, so a GPU pass copies no tapped layer to the host per batch.

    S and the root are computed in float32 like OpenOOD (relative difference to a float64 computation
    ~1e-6: the root adds at most one float32 rounding); S by :func:`~.gram_rowsums.gram_row_sums`
    (``backend``: see there).
    """
    g = gram_row_sums(t, powers, backend)
    for row, p in zip(g, powers):
        if p != 1:  # p = 1: sign(S)|S| is S
            row.copy_(row.sign() * row.abs().pow_(1.0 / p))
    return g


def class_bounds(mins: torch.Tensor, maxs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What scoring reads per class from the fitted element-wise bounds ([..., K, C] float32, +inf/-inf
    for a class without training samples): ``(lo, hi, 1/|lo + 1e-6|, 1/|hi + 1e-6|)``, with the bounds of
    a class never fitted opened to (-inf, inf) and its reciprocals 0, so it adds no deviation."""
    unfitted = ~torch.isfinite(mins).all(dim=-1, keepdim=True)
    lo = mins.masked_fill(unfitted, float("-inf"))
    hi = maxs.masked_fill(unfitted, float("inf"))
    inv = [(1.0 / (b.double() + 1e-6).abs()).float().masked_fill(unfitted, 0.0) for b in (mins, maxs)]
    return lo, hi, *inv


def deviation(lo: torch.Tensor, hi: torch.Tensor, inv_lo: torch.Tensor, inv_hi: torch.Tensor,
              g: torch.Tensor) -> torch.Tensor:
    """``sum_j relu(lo_j - g_j) / |lo_j + 1e-6| + relu(g_j - hi_j) / |hi_j + 1e-6|`` over the last dimension
    j (OpenOOD's deviation; the reciprocals come from :func:`class_bounds`): float32 terms summed in
    float64, [..., C] -> float64 [...]."""
    below = (lo - g).clamp_min_(0).mul_(inv_lo)
    return below.add_((g - hi).clamp_min_(0).mul_(inv_hi)).sum(dim=-1, dtype=torch.float64)


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
        self._mins = self._maxs = self._bounds = self._norm = None
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
        never fitted), every power at once: g [P, B, C] float32, classes [B] (< K) -> float64 [P, B]."""
        return deviation(*(b[:, classes] for b in self._bounds[l]), g)


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
        self.held_feats: list = []  # per batch, per layer: float32 [P, n_held, C]
        self.held_labels: list = []

    def update(self, reduced, logits, labels):
        feats = [reduced[t.key] for t in self.taps]
        labels = labels.long().cpu()
        dev = feats[0].device  # the features stay where the pass computed them
        if self.mins is None:  # per layer [P, K, C]
            k = max(int(labels.max()) + 1, logits.shape[1])
            self.mins = [torch.full((g.shape[0], k, g.shape[2]), float("inf"), device=dev) for g in feats]
            self.maxs = [-m for m in self.mins]
        held = self.held.take(len(labels))
        # row indices chosen on the host (labels and the hold-out stream are host data), then moved once
        fit_rows = (~held & (labels >= 0)).nonzero().squeeze(1)
        keep = (held & (labels >= 0)).nonzero().squeeze(1)
        fit_dev, keep_dev = fit_rows.to(dev, non_blocking=True), keep.to(dev, non_blocking=True)
        y = labels[fit_rows].to(dev, non_blocking=True)
        for l, g in enumerate(feats):
            g = g.index_select(1, fit_dev)
            idx = y[None, :, None].expand_as(g)
            self.mins[l].scatter_reduce_(1, idx, g, "amin")
            self.maxs[l].scatter_reduce_(1, idx, g, "amax")
        self.held_feats.append([layer.index_select(1, keep_dev) for layer in feats])
        self.held_labels.append(labels[keep].to(dev, non_blocking=True))

    def finish(self) -> GramPostprocessor:
        pp = self.pp
        if self.mins is None:
            raise ValueError("gram: the id_train pass had no samples")
        pp._mins, pp._maxs = self.mins, self.maxs  # per layer [P, K, C]
        pp._bounds = [class_bounds(lo, hi) for lo, hi in zip(pp._mins, pp._maxs)]
        hy = torch.cat(self.held_labels)
        norms = []
        for l in range(len(pp.layer_names)):
            if len(hy) == 0:
                norms.append(1.0)
                continue
            held = torch.cat([b[l] for b in self.held_feats], dim=1)
            dev = pp._layer_deviation(l, held, hy).sum(dim=0)
            n = float(dev.mean())
            norms.append(n if n > 0 else 1.0)  # no held-out deviation at this layer: leave it unscaled
        pp._norm = norms
        return pp


class _GramScore:
    """Streaming scoring: -sum_l sum_p dev / n_l / MSP per sample, deviations from the predicted class."""

    def __init__(self, pp: GramPostprocessor):
        self.pp, self.taps, self.confs = pp, pp._taps(), []

    def update(self, reduced, logits, labels):
        dev = reduced[self.taps[0].key].device
        msp, preds = logits.double().softmax(dim=1).max(dim=1)
        preds = preds.to(dev, non_blocking=True)
        total = torch.zeros(len(logits), dtype=torch.float64, device=dev)
        for l, t in enumerate(self.taps):
            total += self.pp._layer_deviation(l, reduced[t.key], preds).sum(dim=0) / self.pp._norm[l]
        self.confs.append(-total / msp.to(dev, non_blocking=True))  # on the device until the split ends

    def finish(self) -> np.ndarray:
        return torch.cat(self.confs).cpu().numpy() if self.confs else np.zeros(0)
