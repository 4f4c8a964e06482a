"""AdaSCALE (Regmi et al., "AdaSCALE: Adaptive Scaling for OOD Detection", 2025; OpenOOD v1.5's
``adascale_a`` / ``adascale_l``): SCALE's activation (or logit) scaling with a per-sample percentile.

Each sample's percentile comes from how much its penultimate activations move under a small input
perturbation (an OOD sample's move more): the perturbation needs the input gradient of the top logit, so
the method re-runs the network in micro-batches (one forward-backward pass and one forward pass over the
perturbed batch), on the ID validation split for the fit and on every scored split.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import torch

from ..schema import Length, NonNegativeFloat, NonNegativeInt, PositiveInt, Range
from .base import Postprocessor
from .input_gradients import GradientBatch, GradientScorer, run_gradient_pass
from .layer_features import GRAD_BATCH_SIZE
from .registry import POSTPROCESSORS

OpenPercent = Annotated[float, Range(0, 100, open_low=True, open_high=True)]
Percent = Annotated[float, Range(0, 100, open_low=True)]


def perturb_least_sensitive(images: torch.Tensor, grad: torch.Tensor, fraction: float, step: float) -> torch.Tensor:
    """``x + step * sign(grad) * m``, m keeping the ``floor(fraction * C*H*W)`` elements of smallest
    ``|grad|`` per sample (``sign(0) = 0``): a step towards a larger top logit where it is least sensitive."""
    flat = grad.abs().reshape(len(grad), -1)
    n = int(flat.shape[1] * fraction)
    mask = torch.zeros_like(flat)
    mask.scatter_(1, torch.topk(flat, n, dim=1, largest=False).indices, 1.0)
    return images.detach() + step * grad.sign() * mask.view_as(grad)


def top_logit(batch: GradientBatch) -> torch.Tensor:
    """The sum over the batch of each sample's largest logit (its input gradient steers AdaSCALE's step)."""
    return batch.logits.gather(1, batch.logits.detach().argmax(dim=1, keepdim=True)).sum()


def shift_statistic(feat: torch.Tensor, feat_perturbed: torch.Tensor, k1: float, k2: float,
                    lmbda: float) -> torch.Tensor:
    """Q' [B] = sum of relu(z~) over the top-k1% units of z + lmbda * sum of |z - z~| over the top-k2% units
    of z (z: penultimate features [B, D], z~: those of the perturbed input; k% of D rounded down, which
    must leave at least one unit)."""
    d = feat.shape[1]
    for name, k in (("k1", k1), ("k2", k2)):
        if int(d * k / 100) == 0:
            raise ValueError(f"adascale: {name}={k}% of the {d} feature units rounds down to none; "
                             f"give {name} >= {100 / d:.3g}")
    top1 = torch.topk(feat, int(d * k1 / 100), dim=1).indices
    top2 = torch.topk(feat, int(d * k2 / 100), dim=1).indices
    kept = torch.gather(torch.relu(feat_perturbed), 1, top1).sum(dim=1)
    moved = torch.gather((feat - feat_perturbed).abs(), 1, top2).sum(dim=1)
    return kept + lmbda * moved


def adaptive_scale(feat: torch.Tensor, percentiles: torch.Tensor) -> torch.Tensor:
    """s [B] = sum(relu z) / sum of the k largest relu(z), k = D - round(D * p / 100) per sample (p in (0, 100))."""
    x = torch.relu(feat)
    d = x.shape[1]
    ks = d - torch.round(d * percentiles.to(x.device, torch.float64) / 100.0).long()
    ks = ks.clamp(min=1)  # p so close to 100 that round(D p / 100) = D: keep the top unit
    values = torch.topk(x, int(ks.max()), dim=1).values
    kept = torch.arange(values.shape[1], device=x.device)[None, :] < ks[:, None]
    return x.sum(dim=1) / (values * kept).sum(dim=1)


@POSTPROCESSORS.register("adascale")
class AdaScalePostprocessor(Postprocessor):
    """AdaSCALE: conf = logsumexp(fc(z * exp(s))) (variant ``a``) or logsumexp(fc(z) * s^2) (``l``); higher = more ID.

    s = :func:`adaptive_scale` at the sample's percentile p = p_min + (1 - F(Q')) (p_max - p_min), F the
    empirical CDF of :func:`shift_statistic` Q' on ID validation samples; Q' compares the features z of x
    with those of :func:`perturb_least_sensitive` (x, grad_x of the top logit).

    Args:
        percentile: ``[p_min, p_max]``, 0 < p_min <= p_max < 100 (OpenOOD default [75, 85]).
        k1, k2: percent of the D feature units (the largest of z) summed in Q' (0 < k <= 100; 5 and 1).
        lmbda: weight of the activation shift in Q' (10).
        o: fraction of input elements perturbed (0 < o <= 1; 0.05).
        noise: the perturbation's step in the network's input space (0.5, as OpenOOD's code).
        variant: ``a`` scales the activations (AdaSCALE-A), ``l`` the logits (AdaSCALE-L).
        num_samples: at most this many ID validation samples make F (a seeded random subset beyond it;
            OpenOOD draws an unseeded one).
        seed: that subset's seed.
        grad_batch_size: samples per forward-backward pass (bounds memory; not a hyperparameter).
    Needs the network (``net(x, return_feature=True)`` and ``get_fc_layer()``); fitted on ``id_val``.
    """

    needs_network = True
    network_methods = ("get_fc_layer",)
    #: APS: the percentile range is evaluated jointly from one set of passes (the fit does not depend on it)
    grid_params = ("percentile",)

    def __init__(self, percentile: Annotated[list[OpenPercent], Length(2, 2)] = (75.0, 85.0),
                 k1: Percent = 5.0, k2: Percent = 1.0, lmbda: NonNegativeFloat = 10.0,
                 o: Annotated[float, Range(0, 1, open_low=True)] = 0.05, noise: NonNegativeFloat = 0.5,
                 variant: Literal["a", "l"] = "a", num_samples: PositiveInt = 5000, seed: NonNegativeInt = 0,
                 grad_batch_size: PositiveInt = GRAD_BATCH_SIZE):
        self.check_config({"percentile": percentile})
        self.percentile = [float(p) for p in percentile]
        self.k1, self.k2, self.lmbda, self.o, self.noise = float(k1), float(k2), float(lmbda), float(o), float(noise)
        self.variant, self.num_samples, self.seed = variant, int(num_samples), int(seed)
        self._grad_batch_size = int(grad_batch_size)
        self._fit_q: torch.Tensor | None = None
        self.net = self.device = self.loaders = None

    @staticmethod
    def check_config(kwargs: dict) -> None:
        p = kwargs.get("percentile")
        if p is not None and len(p) == 2 and not float(p[0]) <= float(p[1]):
            raise ValueError(f"percentile: expected [p_min, p_max] with p_min <= p_max, got {list(p)}")

    # ------------------------------------------------------------------ passes
    def _pair(self, batch: GradientBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, z~) of one micro-batch: features of x and of the perturbed x, float32 on the device (computed
        once per batch for every AdaSCALE with the same perturbation, e.g. the two variants)."""
        return batch.shared(("adascale_pair", self.o, self.noise), self._perturbed_pair)

    def _perturbed_pair(self, batch: GradientBatch) -> tuple[torch.Tensor, torch.Tensor]:
        grad = batch.input_grad(("top_logit",), top_logit)
        with torch.no_grad():
            _, feat_perturbed = self.net(perturb_least_sensitive(batch.x, grad, self.o, self.noise),
                                         return_feature=True)
        return batch.features.detach().float(), feat_perturbed.float()

    def _run(self, loader, score, desc: str):
        if self.net is None:
            raise RuntimeError("adascale: attach_network() must be called before fit or scoring")
        (result,), _ = run_gradient_pass(self.net, loader, self.device,
                                         [GradientScorer(score, self._grad_batch_size, features=True)], desc=desc)
        return result

    def fit(self, train_outputs=None, val_outputs=None, **_):
        if self.loaders is None:
            raise RuntimeError("adascale: attach_network(net, device, loaders) must be called before fit")
        q = torch.from_numpy(self._run(self.loaders("id_val"), lambda batch: self._shift(*self._pair(batch)).cpu(),
                                       "adascale fit"))
        if len(q) == 0:
            raise ValueError("adascale: the id_val split has no image to fit on")
        if len(q) > self.num_samples:
            keep = torch.randperm(len(q), generator=torch.Generator().manual_seed(self.seed))[: self.num_samples]
            q = q[keep]
        self._fit_q = q.double().sort().values
        return self

    def _shift(self, feat: torch.Tensor, feat_perturbed: torch.Tensor) -> torch.Tensor:
        return shift_statistic(feat, feat_perturbed, self.k1, self.k2, self.lmbda)

    def percentiles(self, q: torch.Tensor, p_range) -> torch.Tensor:
        """p [B] = p_min + (1 - F(Q')) (p_max - p_min), F(v) the fraction of fitted Q' values <= v."""
        fitted = self._fit_q
        cdf = torch.searchsorted(fitted, q.double().cpu(), right=True).double() / len(fitted)
        low, high = float(p_range[0]), float(p_range[1])
        return low + (1.0 - cdf) * (high - low)

    def confidences(self, feat: torch.Tensor, q: torch.Tensor, p_range) -> torch.Tensor:
        """float64 [B] confidences of a batch's features z with shift statistics Q'."""
        fc = self.net.get_fc_layer()
        scale = adaptive_scale(feat, self.percentiles(q, p_range))
        with torch.no_grad():
            if self.variant == "a":
                logits = fc(feat * torch.exp(scale)[:, None].to(feat.dtype))
            else:
                logits = fc(feat) * (scale ** 2)[:, None].to(feat.dtype)
        return torch.logsumexp(logits.double(), dim=1).cpu()

    def gradient_scorer(self, loader=None, p_ranges=None) -> GradientScorer:
        """This method's part of a shared gradient pass (see :mod:`.input_gradients`): per micro-batch the
        confidences [B] at its own percentile range, or a list of them, one per range in ``p_ranges``."""
        if self._fit_q is None:
            raise RuntimeError("adascale: fit() must be called before scoring")
        ranges = [self.percentile] if p_ranges is None else list(p_ranges)

        def score(batch: GradientBatch):
            feat, feat_perturbed = self._pair(batch)
            q = self._shift(feat, feat_perturbed)
            confs = [self.confidences(feat, q, p_range) for p_range in ranges]
            return confs[0] if p_ranges is None else confs

        return GradientScorer(score, self._grad_batch_size, features=True)

    def grid_scores(self, loader, p_ranges) -> list[np.ndarray]:
        """Confidences of a whole split for every ``[p_min, p_max]`` in ``p_ranges`` from one set of passes."""
        if self.net is None:
            raise RuntimeError("adascale: attach_network() must be called before fit or scoring")
        (confs,), _ = run_gradient_pass(self.net, loader, self.device, [self.gradient_scorer(loader, p_ranges)],
                                        desc="adascale")
        return confs if isinstance(confs, list) else [confs] * len(p_ranges)  # an empty split: zeros(0) each

    def score_loader(self, loader) -> np.ndarray:
        return self.grid_scores(loader, [self.percentile])[0]

    def aps_scores(self, combos: list[dict], loaders: dict) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ID-val, OOD-val) confidences per grid combination, all from one pass set per split."""
        ranges = [c.get("percentile", self.percentile) for c in combos]
        return list(zip(self.grid_scores(loaders["id_val"], ranges), self.grid_scores(loaders["ood_val"], ranges)))
