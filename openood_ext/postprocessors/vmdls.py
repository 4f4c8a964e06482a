"""VMDLS score (Dinari & Freifeld, UAI 2022): class-conditional full-covariance Gaussians over a feature
ensemble, optionally weighted by a reconstruction distance.

Fitting (ID training split, eval mode, the loader's test transform, i.e. no augmentation): for every class
c one Gaussian N(m_c, S_c) over f(x) = [pooled l1, l2, l3, encoder output, mu] (``net.ensemble(x)``),
with the biased covariance, symmetrised, plus a jitter (k* + 2) * jitter_step * I shared by all classes,
where k* is the smallest integer that makes every class's Cholesky factorisation succeed (float64).

Scoring: lp_c(x) = log N(f(x); m_c, S_c) (with log-det and constant), and

    score(x) = max_c (lp_c(x) - M) * d(x)            (higher = more in-distribution, <= 0)

d(x) = r(x) / max r, r(x) = mean_j (l1(x) - l1(AE(x)))_j^2 measured in the VMDLS encoder's pooled first
layer (``net.first_layer``) for a frozen autoencoder given by ``ae``; without ``ae`` d = 1.

Where M comes from (``shift``):

* ``scored`` (default, the published rule): M = max over the *evaluated set* of max_c lp_c + 1 and d
  normalised by that set's max r, where the evaluated set is the ID test split together with one OOD set
  (the published test sets pair the known test images with one OOD set). The pipeline scores each split
  on its own, so each split carries its per-sample parts (max_c lp_c and r) and :meth:`rescore_pair`; the
  ``ood`` evaluator recomputes both sides of every (ID test, OOD set) pair with that pair's M and max r.
  The ID test scores therefore differ from one OOD set to the next, as published. The confidences saved
  per split are the split scored alone. :meth:`VMDLSPostprocessor.score_sets` scores any group of
  splits as one evaluated set.
* ``fit``: M = max over the *training* set of max_c lp_c + 1, and d is normalised by the training set's
  max r: every split on one fixed scale, independent of which sets are evaluated (a deployable score).

Without ``ae`` the shift is a constant and neither choice changes any ranking.

Deviation from the published code (``test_step``): it *assigns* the per-class ensemble sums of each
fitting batch instead of adding them, so a class spread over several batches gets wrong statistics
(mean / n_batches-ish). Here the per-class sums are accumulated over all batches.
"""

from __future__ import annotations

import math
from typing import Literal, Mapping

import numpy as np
import torch

from ..errors import ConfigError
from ..features import Tap, extract_outputs
from .base import Postprocessor
from .registry import POSTPROCESSORS



class GaussianStats:
    """Per-class running sums (float64) of x and x x^T, for class statistics over many batches."""

    def __init__(self, num_classes: int, dim: int):
        self.n = torch.zeros(num_classes, dtype=torch.float64)
        self.s1 = torch.zeros(num_classes, dim, dtype=torch.float64)
        self.s2 = torch.zeros(num_classes, dim, dim, dtype=torch.float64)

    def add(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        x, labels = x.detach().double().cpu(), labels.long().cpu()
        for c in labels.unique().tolist():
            xc = x[labels == c]
            self.n[c] += len(xc)
            self.s1[c] += xc.sum(0)
            self.s2[c] += xc.T @ xc

    def moments(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(classes present [K], means [K, D], biased symmetrised covariances [K, D, D])."""
        present = torch.nonzero(self.n > 0).flatten()
        n = self.n[present]
        means = self.s1[present] / n[:, None]
        cov = self.s2[present] / n[:, None, None] - means[:, :, None] * means[:, None, :]
        return present, means, 0.5 * (cov + cov.transpose(1, 2))


def _chol_ok(cov: torch.Tensor, jitter: float) -> torch.Tensor:
    """Bool [K]: does Cholesky of cov_k + jitter * I succeed?"""
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype)
    _, info = torch.linalg.cholesky_ex(cov + jitter * eye)
    return info == 0


def jitter_search(cov: torch.Tensor, step: float = 1e-6, offset: int = 2, max_jitter: float = 1.0,
                  classes=None) -> tuple[float, int]:
    """(jitter, k*): k* = smallest integer k with every Cholesky of cov_c + k*step*I succeeding; jitter =
    (k* + offset) * step (the published rule: one more step than the linear scan's last failure, +1).

    Found by doubling then bisection (success is monotone in k), equal to the published linear scan.
    Raises ConfigError naming the class when even ``max_jitter`` does not make its covariance positive
    definite (e.g. NaN or infinite features).
    """
    classes = list(range(len(cov))) if classes is None else [int(c) for c in classes]
    if bool(_chol_ok(cov, 0.0).all()):
        return offset * step, 0
    hi, k_max = 1, max(1, int(math.floor(max_jitter / step)))
    while not bool(_chol_ok(cov, hi * step).all()):
        if hi >= k_max:
            bad = torch.nonzero(~_chol_ok(cov, k_max * step)).flatten().tolist()
            raise ConfigError(f"vmdls: the feature covariance of class {classes[bad[0]]} stays singular with "
                              f"a diagonal jitter up to {max_jitter:g} (max_jitter); are its features finite?")
        hi = min(2 * hi, k_max)
    lo = hi // 2  # fails (or 0, which failed above)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if bool(_chol_ok(cov, mid * step).all()):
            hi = mid
        else:
            lo = mid
    return (hi + offset) * step, hi


def gaussian_loglik(x: torch.Tensor, means: torch.Tensor, chol: torch.Tensor) -> torch.Tensor:
    """log N(x; m_c, L_c L_c^T) for every row and class, float64 [N, K]."""
    x = x.double()
    d = x.shape[1]
    out = torch.empty(len(x), len(means), dtype=torch.float64)
    for k in range(len(means)):
        diff = (x - means[k]).T                                 # [D, N]
        sol = torch.linalg.solve_triangular(chol[k], diff, upper=False)
        maha = sol.pow(2).sum(0)
        logdet = 2.0 * torch.log(torch.diagonal(chol[k])).sum()
        out[:, k] = -0.5 * (maha + logdet + d * math.log(2 * math.pi))
    return out


def vmdls_scores(max_loglik: np.ndarray, recon: np.ndarray | None = None, shift: float | None = None,
                 recon_max: float | None = None) -> np.ndarray:
    """(max_c lp_c - M) * d for a scored set; M = ``shift`` or max(max_loglik) + 1 over this set;
    d = recon / ``recon_max`` (default: this set's max) or 1 without ``recon``. Higher = more ID."""
    lp = np.asarray(max_loglik, dtype=np.float64)
    m = float(lp.max()) + 1.0 if shift is None else float(shift)
    if recon is None:
        return lp - m
    r = np.asarray(recon, dtype=np.float64)
    rmax = float(r.max()) if recon_max is None else float(recon_max)
    return (lp - m) * (r / max(rmax, 1e-300))


def joint_scores(sets: Mapping[str, tuple[np.ndarray, np.ndarray | None]]) -> dict[str, np.ndarray]:
    """Several sets, name -> (max_c lp_c [N], r [N] or None), scored as ONE evaluated set (the published
    rule: M and max r over all of them; d = 1 unless every set has r); name -> confidences."""
    names = list(sets)
    best = np.concatenate([np.asarray(sets[n][0], dtype=np.float64) for n in names])
    recons = [sets[n][1] for n in names]
    recon = None if any(r is None for r in recons) else np.concatenate(recons)
    conf = vmdls_scores(best, recon)
    bounds = np.cumsum([0] + [len(sets[n][0]) for n in names])
    return {n: conf[a:b] for n, a, b in zip(names, bounds[:-1], bounds[1:])}


@POSTPROCESSORS.register("vmdls")
class VMDLSPostprocessor(Postprocessor):
    """See the module docstring. Needs a ``vmdls`` network (``encoder`` returning ``(pooled list, output)``,
    ``fc_mu``, ``first_layer``).

    Works from the shared forward pass's layer taps (``uses_taps``): the id_train pass fits the Gaussians
    (``fit_taps``), each scored split's pass gives ``(conf [N] float64, preds [N])`` (``score_taps``;
    preds = the class of the best Gaussian). The ensemble feature is read off the network's own forward
    (the encoder's pooled layers and output, and mu = ``fc_mu``'s output), so the method adds no pass;
    with ``ae`` the encoder's input (the images) is tapped too, to measure the reconstruction distance.
    ``attach_network`` + ``fit``/``score_loader`` run the same consumers over loaders instead.

    Args:
        jitter_step: the jitter unit (1e-6, as published). jitter_offset: steps added to k* (2).
        max_jitter: largest jitter tried before failing (1.0).
        shift: ``scored`` (published, default) | ``fit`` (see the module docstring).
        ae: optional frozen autoencoder for the reconstruction weight: an ``nn.Module``, or a NETWORKS
            spec with a ``checkpoint`` (``{name: ..., checkpoint: path, ...}``), loaded by
            :func:`openood_ext.networks.checkpoint.load_network` when the first pass is set up.
    """

    uses_taps = True
    network_methods = ("ensemble", "first_layer")  # only networks with these can be scored

    def __init__(self, jitter_step: float = 1e-6, jitter_offset: int = 2, max_jitter: float = 1.0,
                 shift: Literal["scored", "fit"] = "scored", ae=None):
        if not jitter_step > 0:
            raise ValueError(f"vmdls: jitter_step must be > 0, got {jitter_step}")
        if not (isinstance(jitter_offset, int) and jitter_offset >= 0):
            raise ValueError(f"vmdls: jitter_offset must be an integer >= 0, got {jitter_offset!r}")
        if not max_jitter >= jitter_step:
            raise ValueError(f"vmdls: max_jitter must be >= jitter_step, got {max_jitter}")
        self.jitter_step, self.jitter_offset, self.max_jitter = float(jitter_step), jitter_offset, float(max_jitter)
        self.shift = shift
        self._ae_spec = ae
        # fitted state (set by the fit consumer's finish, i.e. by fit): nothing else persists between calls
        self.jitter: float | None = None
        self.m_fit: float | None = None
        self.r_fit_max: float | None = None
        self.classes = self.means = self.chol = None
        self._net = self._ae = None
        self.net = self.device = self.loaders = None

    # ------------------------------------------------------------------ taps
    def _check_net(self, net) -> None:
        if net is None:
            raise RuntimeError("vmdls: attach_network(net, device, loaders) must be called before fit/score")
        if not callable(getattr(net, "ensemble", None)):
            raise ConfigError(f"postprocessor vmdls: network {type(net).__name__} has no ensemble(x); "
                              f"use network.name: vmdls")

    def _autoencoder(self, device):
        """The frozen autoencoder (None without ``ae``); resolved once, with the network it is used on."""
        if self._ae is None and self._ae_spec is not None:
            if isinstance(self._ae_spec, torch.nn.Module):
                self._ae = self._ae_spec.to(device or "cpu").eval().requires_grad_(False)
            else:
                from ..networks.checkpoint import load_network
                self._ae = load_network(self._ae_spec, device or "cpu")
        return self._ae

    def _taps(self, net=None) -> list[Tap]:
        # the pieces of net.ensemble(x) = [l1, l2, l3, encoder output, mu] as the plain forward computes them
        taps = [Tap("encoder", "vmdls:pooled", lambda pooled: torch.cat(list(pooled), dim=1)),
                Tap("fc_mu:input", "identity", _identity), Tap("fc_mu", "identity", _identity)]
        # the images: for the reconstruction distance, and for the ensemble of a network whose test-time
        # features are random (published WRN: each piece from its own dropout draw, net.ensemble(x))
        if self._ae_spec is not None or getattr(net, "separate_draws", False):
            taps.append(Tap("encoder:input", "identity", _identity))
        return taps

    def fit_taps(self, net: torch.nn.Module, example: torch.Tensor | None = None) -> _VMDLSFit:
        """A consumer fitting the class Gaussians from the id_train pass; ``finish()`` sets the fit."""
        self._check_net(net)
        self._net = net
        return _VMDLSFit(self, net, self._autoencoder(_device_of(net)))

    def score_taps(self) -> _VMDLSStream:
        """A consumer whose ``finish()`` is a split's ``(conf float64 [N], preds [N], parts)``: conf on the
        training set's scale (``shift: fit``) or the split scored alone (``scored``, with ``parts`` =
        ``{"best": max_c lp_c, "recon": r}`` for :meth:`rescore_pair`); higher conf = more in-distribution."""
        if self.chol is None:
            raise RuntimeError("vmdls: call fit() before scoring")
        return _VMDLSStream(self, self._net, self._ae, finish=self._conf_and_preds)

    # ------------------------------------------------------------------ contract
    def fit(self, train_outputs=None, val_outputs=None, **_):
        """Fitted already from the shared pass (``fit_taps``), else one pass of the fit consumer over
        ``loaders("id_train")`` (after ``attach_network``)."""
        if self.chol is not None:
            return self
        self._check_net(self.net)
        extract_outputs(self.net, self.loaders("id_train"), self.device, desc="vmdls fit",
                        consumers=[self.fit_taps(self.net)])
        return self

    def fit_gaussians(self, stats: GaussianStats) -> None:
        """Means, jittered Cholesky factors (float64) from accumulated statistics."""
        classes, means, cov = stats.moments()
        self.jitter, k = jitter_search(cov, self.jitter_step, self.jitter_offset, self.max_jitter, classes)
        eye = torch.eye(cov.shape[-1], dtype=torch.float64)
        self.chol = torch.linalg.cholesky(cov + self.jitter * eye)
        self.classes, self.means = classes, means
        self.jitter_steps = k

    def loglik(self, feats: torch.Tensor) -> torch.Tensor:
        """lp [N, K] (float64) for ensemble features."""
        if self.chol is None:
            raise RuntimeError("vmdls: call fit() before scoring")
        return gaussian_loglik(feats, self.means, self.chol)

    def _loglik_of(self, stream: _VMDLSStream):
        feats, labels, recon = stream.arrays()
        lp = self.loglik(feats) if len(feats) else torch.zeros(0, len(self.means), dtype=torch.float64)
        return lp, labels, recon

    def _conf_and_preds(self, stream: _VMDLSStream):
        lp, _, recon = self._loglik_of(stream)
        if len(lp) == 0:
            return np.zeros(0), np.zeros(0, dtype=np.int64)
        best = lp.max(1).values.numpy()
        preds = self.classes[lp.argmax(1)].numpy()
        if recon is None:
            return best, preds  # M is a constant here: max_c lp_c - M ranks like max_c lp_c
        recon = recon.numpy()
        if self.shift == "scored":
            return vmdls_scores(best, recon), preds, {"best": best, "recon": recon}
        return vmdls_scores(best, recon, shift=self.m_fit, recon_max=self.r_fit_max), preds

    def rescore_pair(self, id_parts: Mapping[str, np.ndarray], ood_parts: Mapping[str, np.ndarray]):
        """(ID conf, OOD conf) of the ID test and one OOD set scored as one evaluated set (``shift: scored``)."""
        joint = joint_scores({"id": (id_parts["best"], id_parts["recon"]),
                              "ood": (ood_parts["best"], ood_parts["recon"])})
        return joint["id"], joint["ood"]

    def _run(self, loader, finish):
        self._check_net(self.net)
        stream = _VMDLSStream(self, self.net, self._autoencoder(self.device), finish=finish)
        return extract_outputs(self.net, loader, self.device, desc="vmdls", consumers=[stream]).tap_results[0]

    def loglik_loader(self, loader):
        """(lp [N, K], labels [N], r [N] or None) for a split (after ``attach_network``)."""
        return self._run(loader, self._loglik_of)

    def score_loader(self, loader) -> np.ndarray:
        """A split's confidences, float64 [N] (the split scored alone under ``shift: scored``)."""
        return np.asarray(self.scored_split(loader)[0])

    def scored_split(self, loader):
        """A split's whole result, as :meth:`score_taps`'s ``finish()`` gives it: ``(conf, preds)``, plus the
        parts for :meth:`rescore_pair` under ``shift: scored`` with an autoencoder."""
        self.score_taps()  # the same checks
        return self._run(loader, self._conf_and_preds)

    def score_sets(self, loaders: Mapping[str, object]) -> dict[str, np.ndarray]:
        """Score several splits as one evaluated set (the published rule: M and max r over all of them)."""
        parts = {name: self.loglik_loader(ld) for name, ld in loaders.items()}
        return joint_scores({n: (lp.max(1).values.numpy(), None if r is None else r.numpy())
                             for n, (lp, _, r) in parts.items()})

    def score(self, outputs):
        raise ConfigError("postprocessor vmdls scores from the shared pass's layer taps (score_taps) or from "
                          "images (score_loader); it cannot score cached outputs")

    def hyperparameters(self) -> dict:
        return {"jitter_step": self.jitter_step, "jitter_offset": self.jitter_offset, "max_jitter": self.max_jitter,
                "shift": self.shift, "ae": None if self._ae_spec is None else str(self._ae_spec),
                "jitter": self.jitter}


def _identity(t):
    return t


def _device_of(net: torch.nn.Module):
    param = next(net.parameters(), None)
    return param.device if param is not None else "cpu"


def _reconstruct(ae, images):
    fn = getattr(ae, "reconstruct", None)
    return fn(images) if callable(fn) else ae(images)


class _VMDLSStream:
    """Per batch: the ensemble feature [f(x)] (float64, cpu) from the taps, and with an autoencoder the
    reconstruction distance r(x) = mean_j (l1(x) - l1(AE(x)))_j^2; ``finish()`` hands them to ``finish``."""

    def __init__(self, pp: VMDLSPostprocessor, net, ae, finish=None):
        self.pp, self.net, self.ae, self._finish = pp, net, ae, finish
        self.taps = pp._taps(net)
        self.feats, self.labels, self.recon = [], [], []

    def ensemble(self, reduced) -> torch.Tensor:
        if getattr(self.net, "separate_draws", False):
            return self.net.ensemble(reduced[self.taps[3].key])
        keys = [t.key for t in self.taps[:3]]
        return torch.cat([reduced[k] for k in keys], dim=1)  # float32 on the device, as net.ensemble(x)

    def distance(self, reduced) -> torch.Tensor | None:
        if self.ae is None:
            return None
        images = reduced[self.taps[3].key]
        a, b = self.net.first_layer(images), self.net.first_layer(_reconstruct(self.ae, images))
        return (a - b).pow(2).mean(1)

    def update(self, reduced, logits, labels) -> None:
        f, r = self.ensemble(reduced), self.distance(reduced)
        self.feats.append(f.double().cpu())
        self.labels.append(labels)
        if r is not None:
            self.recon.append(r.double().cpu())

    def arrays(self):
        """(features float64 [N, D], labels [N], r [N] or None)."""
        if not self.feats:
            return torch.zeros(0, 0, dtype=torch.float64), torch.zeros(0, dtype=torch.long), None
        return torch.cat(self.feats), torch.cat(self.labels), (torch.cat(self.recon) if self.recon else None)

    def finish(self):
        return self._finish(self)


class _VMDLSFit(_VMDLSStream):
    """Streaming fit: per-class sums accumulated over batches (the published code overwrote them), the
    largest r; the training features kept only when ``m_fit`` needs them (``ae`` with ``shift: fit``)."""

    def __init__(self, pp: VMDLSPostprocessor, net, ae):
        super().__init__(pp, net, ae)
        self.stats, self.recon_max = None, 0.0
        self.keep = pp._ae_spec is not None and pp.shift == "fit"

    def update(self, reduced, logits, labels) -> None:
        f = self.ensemble(reduced)
        if self.stats is None:
            k = int(getattr(self.net, "class_means", torch.zeros(0)).shape[0]) or int(labels.max()) + 1
            self.stats = GaussianStats(max(k, int(labels.max()) + 1), f.shape[1])
        if not torch.isfinite(f).all():
            raise ConfigError("vmdls: non-finite ensemble features on the training split "
                              "(NaN latent or encoder output; the network diverged)")
        self.stats.add(f, labels)
        if self.keep:
            self.feats.append(f.double().cpu())
        r = self.distance(reduced)
        if r is not None:
            self.recon_max = max(self.recon_max, float(r.max()))

    def finish(self) -> VMDLSPostprocessor:
        pp = self.pp
        if self.stats is None:
            raise ConfigError("vmdls: the ID training split yielded no images to fit on")
        pp.fit_gaussians(self.stats)
        pp.r_fit_max = self.recon_max if pp._ae_spec is not None else None
        pp.m_fit = None
        if self.keep:  # the training set's max_c lp_c + 1, the shift every split is scored with
            pp.m_fit = float(pp.loglik(torch.cat(self.feats)).max(1).values.max()) + 1.0
        return pp
