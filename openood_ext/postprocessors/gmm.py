"""GMM: a tied-covariance Gaussian mixture on (pooled, optionally PCA-reduced) intermediate features,
OpenOOD v1.5's ``gmm`` baseline: conf = sum_l alpha_l log p_l(x), p_l the mixture density of layer l.

GMM reads intermediate layers without gradients, so it rides the shared forward pass's layer taps
(:mod:`openood_ext.features`): the fit keeps the id_train pass's reduced features of the layers with a
non-zero weight (a ``flat`` layer keeps C*H*W floats per sample: OpenOOD's default layer 2 of a
CIFAR ResNet-18 is 32768-d, ~6.5 GB for 50k images), then fits PCA and the mixture; scoring is per batch.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from ..features import NetOutputs, Tap, extract_outputs
from ..schema import NonNegativeInt
from ..utils.runtime import get_logger
from .base import Postprocessor
from .common import mahalanobis_sq, principal_axes
from .layer_features import first_batch, resolve_layers
from .mds_ensemble import reduce_feature_map
from .registry import POSTPROCESSORS

_FEATURE_TYPES = ("mean", "stat", "flat")


def parse_reduce_dim(spec: str) -> int | None:
    """``none`` -> None, ``pca_<n>`` -> n (n >= 1); anything else is a ValueError."""
    if spec == "none":
        return None
    kind, _, n = str(spec).partition("_")
    if kind != "pca" or not n.isdigit() or int(n) < 1:
        raise ValueError(f"gmm: reduce_dim entries must be 'none' or 'pca_<n>' (n >= 1), got {spec!r}")
    return int(n)


def mixture_log_density(x: torch.Tensor, means: torch.Tensor, precision: torch.Tensor, weights: torch.Tensor,
                        openood: bool = False) -> torch.Tensor:
    """``log sum_k w_k exp(-d_k^2 / 2)``, d_k the Mahalanobis distance to component k under the tied
    precision (the normalising constant, equal for every component, left out as in OpenOOD); float64 [N].

    ``openood=True`` reproduces OpenOOD's float32 ``log(sum_k w_k exp(-d_k^2/2) + 1e-45)``, whose exp
    underflows (every sample with all d_k^2 > ~200 gets the same floor score)."""
    d2 = mahalanobis_sq(x, means, precision)
    if openood:
        dens = torch.exp(-0.5 * d2.float()) @ weights.float()
        return torch.log(dens + 1e-45).double()
    return torch.logsumexp(-0.5 * d2 + weights.double().log()[None, :], dim=1)


def project_float64(feats: np.ndarray, proj: np.ndarray, rows: int = 64) -> np.ndarray:
    """``feats @ proj`` in float64 ([N, D] float32 or float64 times [D, d] float64 -> [N, d]), converting
    ``rows`` rows at a time into one reused buffer: the same products as converting the whole matrix, in
    about a third of the time on 1,000 x 32,768 features (no [N, D] float64 copy; the buffer stays in cache)."""
    out = np.empty((len(feats), proj.shape[1]))
    buf = np.empty((min(rows, len(feats)), feats.shape[1]))
    for i in range(0, len(feats), rows):
        m = min(rows, len(feats) - i)
        np.copyto(buf[:m], feats[i:i + m])
        np.matmul(buf[:m], proj, out=out[i:i + m])
    return out


@POSTPROCESSORS.register("gmm")
class GMMPostprocessor(Postprocessor):
    """GMM: conf = sum_l alpha_l log sum_k w_k exp(-(f_l - m_lk)^T P_l (f_l - m_lk) / 2), a tied GMM per layer; higher = more ID.

    Per layer l (lists of equal length, one entry per layer; OpenOOD v1.5's defaults):

    Args:
        layers: which layers (``["stem", 0, 1]``: OpenOOD's ``feature_list[0..2]``: the stem output
            and the first two stages; see ``layer_features.resolve_layers``).
        feature_type: ``stat`` (mean and variance per channel), ``mean`` or ``flat`` ([stat, mean, flat]).
        num_clusters: mixture components ([3, 1, 50]); clamped to the number of training samples.
        reduce_dim: ``none`` or ``pca_<n>`` ([none, none, pca_50]): projection on the first n principal
            axes (not centred, as OpenOOD); n is clamped to the feature dimension and sample count.
        alpha: layer weights ([0, 0, 1]: only the third layer counts); layers weighted 0 are not tapped.
        density: ``logsumexp`` (default: the exact log mixture density, in float64) or ``openood``
            (OpenOOD's float32 ``log(density + 1e-45)``, which underflows to one floor value far out).
        pca_solver: how the PCA is computed (:func:`~.common.principal_axes`). ``auto`` (default): the
            exact PCA through the N x N sample Gram matrix when the id_train split has at most 2,048
            samples (2.5x less time than the randomized solver on 1,000 x 32,768 features), else
            sklearn's ``auto`` (seeded randomized on large inputs); ``gram`` forces the former;
            ``full`` and ``randomized`` are sklearn's solvers. OpenOOD uses sklearn's ``auto`` unseeded,
            i.e. an unseeded randomized PCA on its inputs, so its scores change from run to run
            (``randomized`` is that solver, seeded); ``full`` is sklearn's exact PCA.
        pca_dtype: the arithmetic of the PCA fit: ``float32`` (default; the tapped features are float32,
            and on 1,000 x 32,768 features the randomized PCA takes about a third of the float64 time,
            its 50-d subspace within cosine 0.99999 of float64's) or ``float64`` (OpenOOD's, whose
            features reach sklearn as Python floats). The projection and the mixture are float64 either way.
        seed: ``random_state`` of the PCA and of the mixture's k-means initialisation (OpenOOD's mixture: 0).
    """

    uses_taps = True

    def __init__(self, layers=("stem", 0, 1), feature_type=("stat", "mean", "flat"), num_clusters=(3, 1, 50),
                 reduce_dim=("none", "none", "pca_50"), alpha=(0.0, 0.0, 1.0),
                 density: Literal["logsumexp", "openood"] = "logsumexp",
                 pca_solver: Literal["auto", "gram", "full", "randomized"] = "auto",
                 pca_dtype: Literal["float32", "float64"] = "float32", seed: NonNegativeInt = 0):
        lists = {"layers": list(layers), "feature_type": list(feature_type), "num_clusters": list(num_clusters),
                 "reduce_dim": list(reduce_dim), "alpha": list(alpha)}
        if len({len(v) for v in lists.values()}) != 1 or not lists["layers"]:
            raise ValueError("gmm: layers, feature_type, num_clusters, reduce_dim and alpha must be non-empty "
                             "lists of one length, got " + ", ".join(f"{k} {len(v)}" for k, v in lists.items()))
        bad = [t for t in lists["feature_type"] if t not in _FEATURE_TYPES]
        if bad:
            raise ValueError(f"gmm: feature_type entries must be in {_FEATURE_TYPES}, got {bad}")
        if any(not isinstance(k, int) or k < 1 for k in lists["num_clusters"]):
            raise ValueError(f"gmm: num_clusters must be integers >= 1, got {lists['num_clusters']}")
        for spec in lists["reduce_dim"]:
            parse_reduce_dim(spec)
        if not any(float(a) != 0 for a in lists["alpha"]):
            raise ValueError(f"gmm: alpha weights every layer 0, got {lists['alpha']}")
        self.layers, self.feature_type = lists["layers"], lists["feature_type"]
        self.num_clusters, self.reduce_dim = [int(k) for k in lists["num_clusters"]], lists["reduce_dim"]
        self.alpha = [float(a) for a in lists["alpha"]]
        self.density, self.pca_solver, self.pca_dtype, self.seed = density, pca_solver, pca_dtype, int(seed)
        self.layer_names: list[str] | None = None
        self._models: list | None = None  # per used layer: (projection, means, precision, weights)
        self.net = self.device = self.loaders = None

    @property
    def _used(self) -> list[int]:
        return [i for i, a in enumerate(self.alpha) if a != 0]

    def _taps(self) -> list[Tap]:
        return [Tap(self.layer_names[i], f"gmm:{self.feature_type[i]}",
                    lambda t, ft=self.feature_type[i]: reduce_feature_map(t, ft).float().cpu()) for i in self._used]

    def fit_taps(self, net: torch.nn.Module, example: torch.Tensor) -> _GMMFit:
        self.layer_names = resolve_layers(net, self.layers, example)
        return _GMMFit(self)

    def score_taps(self) -> _GMMScore:
        if self._models is None:
            raise RuntimeError("gmm: call fit() before scoring")
        return _GMMScore(self)

    def fit(self, train_outputs: NetOutputs | None = None, val_outputs: NetOutputs | None = None, **_):
        if self._models is not None:  # fitted from the shared pass
            return self
        if self.net is None or self.loaders is None:
            raise RuntimeError("gmm: fit from the shared forward pass (fit_taps), or attach_network(net, "
                               "device, loaders) first")
        loader = self.loaders("id_train")
        consumer = self.fit_taps(self.net, first_batch(loader).to(self.device))
        extract_outputs(self.net, loader, self.device, desc="gmm fit", consumers=[consumer])
        return self

    def score_loader(self, loader) -> np.ndarray:
        return extract_outputs(self.net, loader, self.device, desc="gmm", consumers=[self.score_taps()]).tap_results[0]

    def score(self, outputs: NetOutputs) -> np.ndarray:
        raise RuntimeError("gmm scores from the shared forward pass's layer taps (score_taps), or "
                           "score_loader after attach_network, not from cached outputs")

    def fit_layer(self, i: int, feats: np.ndarray):
        """(projection [D, d], means [K, d], precision [d, d], weights [K]) of layer i from [N, D] features
        (float32 or float64; projected and mixed in float64)."""
        from sklearn.mixture import GaussianMixture
        n, d = feats.shape
        kept = parse_reduce_dim(self.reduce_dim[i])
        if kept is None:
            x = feats.astype(np.float64, copy=False)
            proj = np.eye(d)
        else:
            if kept > min(n, d):
                get_logger().warning("gmm: layer %s: pca_%d exceeds min(samples %d, dim %d); keeping %d",
                                     self.layer_names[i], kept, n, d, min(n, d))
                kept = min(n, d)
            proj = principal_axes(feats, kept, self.pca_solver, self.pca_dtype, self.seed)
            x = project_float64(feats, proj)
        k = min(self.num_clusters[i], n)
        if k < self.num_clusters[i]:
            get_logger().warning("gmm: layer %s: %d clusters for %d samples; using %d",
                                 self.layer_names[i], self.num_clusters[i], n, k)
        gm = GaussianMixture(n_components=k, covariance_type="tied", random_state=self.seed).fit(x)
        return tuple(torch.from_numpy(np.asarray(a, dtype=np.float64))
                     for a in (proj, gm.means_, gm.precisions_, gm.weights_))

    def layer_scores(self, reduced: list[torch.Tensor]) -> torch.Tensor:
        """conf float64 [B] from the used layers' reduced features."""
        total = 0
        for i, f, (proj, means, prec, weights) in zip(self._used, reduced, self._models):
            x = f.double() @ proj
            total = total + self.alpha[i] * mixture_log_density(x, means, prec, weights, self.density == "openood")
        return total


class _GMMFit:
    def __init__(self, pp: GMMPostprocessor):
        self.pp, self.taps, self.feats = pp, pp._taps(), [[] for _ in pp._used]

    def update(self, reduced, logits, labels):
        for j, t in enumerate(self.taps):
            self.feats[j].append(reduced[t.key])

    def finish(self) -> GMMPostprocessor:
        if not self.feats[0]:
            raise ValueError("gmm: the id_train pass had no samples")
        pp = self.pp
        pp._models = [pp.fit_layer(i, torch.cat(f).numpy()) for i, f in zip(pp._used, self.feats)]
        return pp


class _GMMScore:
    def __init__(self, pp: GMMPostprocessor):
        self.pp, self.taps, self.confs = pp, pp._taps(), []

    def update(self, reduced, logits, labels):
        self.confs.append(self.pp.layer_scores([reduced[t.key] for t in self.taps]))

    def finish(self) -> np.ndarray:
        return torch.cat(self.confs).numpy() if self.confs else np.zeros(0)
