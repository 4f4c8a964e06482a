"""Math shared by several postprocessors, in one place and in float64.

* last-layer access: :func:`fc_params`, :func:`linear_logits`, :func:`energy`;
* class-conditional Gaussians with a shared covariance (MDS, RMDS, MDSEns): :func:`class_gaussians`,
  :func:`full_gaussian`, :func:`mahalanobis_sq`;
* the principal / residual subspace of the features around ``u = -pinv(W) b`` (ViM, Residual):
  :func:`vim_origin`, :func:`residual_basis`; principal axes of wide features (GMM): :func:`principal_axes`;
* choosing which ID outputs a method fits on: :func:`fit_outputs`.

Everything takes and returns torch tensors (float64 unless said otherwise) or numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import linalg

from ..features import NetOutputs
from ..utils.runtime import full_precision, get_logger


# ---------------------------------------------------------------------------- last layer
def fc_params(outputs: NetOutputs, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W [C, D], b [C])`` of the last linear layer from ``outputs.extras``, float64.

    Raises ValueError naming ``method`` when the extras are missing or do not match the features.
    """
    extras = outputs.extras or {}
    if "fc_weight" not in extras:
        raise ValueError(f"{method} needs the last linear layer: NetOutputs.extras has no 'fc_weight' "
                         f"(the network must expose get_fc_layer())")
    w = extras["fc_weight"].detach().double().cpu()
    b = extras.get("fc_bias")
    b = torch.zeros(w.shape[0], dtype=torch.float64) if b is None else b.detach().double().cpu()
    if w.ndim != 2 or w.shape[1] != outputs.features.shape[1] or b.shape != (w.shape[0],):
        raise ValueError(f"{method}: fc_weight {tuple(w.shape)} / fc_bias {tuple(b.shape)} do not match "
                         f"features of dimension {outputs.features.shape[1]}")
    return w, b


def linear_logits(features: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``features @ W.T + b`` in float64, [N, C]."""
    return features.double() @ w.double().T + b.double()


@full_precision
def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Negative free energy ``T * logsumexp(logits / T)`` in float64, [N]."""
    t = float(temperature)
    return t * torch.logsumexp(logits.double() / t, dim=1)


def softmax64(logits: torch.Tensor) -> torch.Tensor:
    return logits.double().softmax(dim=1)


def unit_rows(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Row-wise ``x / ||x||_2`` in float64."""
    x = x.double()
    return x / (x.norm(dim=1, keepdim=True) + eps)


# ---------------------------------------------------------------------------- Gaussians
@dataclass
class ClassGaussians:
    """Class means and one shared precision matrix.

    Attributes:
        classes: int64 [K], the class labels that had samples (K <= number of classes).
        means: float64 [K, D].
        precision: float64 [D, D], pseudo-inverse of the shared (biased, divide-by-N) covariance.
    """

    classes: torch.Tensor
    means: torch.Tensor
    precision: torch.Tensor


def _pinvh(cov: np.ndarray) -> np.ndarray:
    """Pseudo-inverse of a symmetric PSD matrix (what sklearn's EmpiricalCovariance.precision_ is)."""
    return linalg.pinvh(cov, check_finite=False)


def class_gaussians(features: torch.Tensor, labels: torch.Tensor, method: str = "mds") -> ClassGaussians:
    """Class means and the shared within-class covariance's pseudo-inverse (Lee et al. 2018).

    The covariance is ``sum_c sum_{i in c} (x_i - mu_c)(x_i - mu_c)^T / N`` (the maximum-likelihood
    estimate, as sklearn's ``EmpiricalCovariance`` of the class-centred features). Samples with a
    negative label (OOD) are ignored.
    """
    if labels is None:
        raise ValueError(f"{method} needs labelled ID training outputs (labels are None)")
    x = features.detach().double().cpu()
    y = torch.as_tensor(labels).long().cpu()
    keep = y >= 0
    x, y = x[keep], y[keep]
    if len(x) == 0:
        raise ValueError(f"{method}: no labelled ID sample to fit class Gaussians on")
    classes = torch.unique(y)
    means = torch.stack([x[y == c].mean(dim=0) for c in classes])
    centred = x - means[torch.searchsorted(classes, y)]
    cov = (centred.T @ centred / len(x)).numpy()
    return ClassGaussians(classes, means, torch.from_numpy(_pinvh(cov)))


def full_gaussian(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [D] and precision [D, D] of one Gaussian over all samples (RMDS's background model)."""
    x = features.detach().double().cpu()
    mean = x.mean(dim=0)
    centred = x - mean
    cov = (centred.T @ centred / len(x)).numpy()
    return mean, torch.from_numpy(_pinvh(cov))


@full_precision
def mahalanobis_sq(x: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Squared Mahalanobis distances ``(x_i - mu_k)^T P (x_i - mu_k)``, float64 [N, K].

    ``means`` may be [D] (one centre, result [N, 1]) or [K, D].
    """
    x = x.double()
    means = means.double().reshape(-1, x.shape[1])
    p = precision.double().to(x.device)
    means = means.to(x.device)
    xp = x @ p
    mp = means @ p
    d2 = (xp * x).sum(dim=1, keepdim=True) - 2.0 * xp @ means.T + (mp * means).sum(dim=1)[None, :]
    return d2.clamp_min(0.0)


# ---------------------------------------------------------------------------- ViM / Residual
def vim_origin(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``u = -pinv(W) b`` [D]: the feature-space point whose logits are all zero (ViM's new origin)."""
    return -(torch.linalg.pinv(w.double()) @ b.double())


def effective_dim(dim: int, feature_dim: int, method: str) -> int:
    """The principal-subspace dimension actually used: ``dim``, or ``D // 2`` when ``dim >= D``.

    OpenOOD's defaults (ViM 256, Residual 512) are meant for 512- or 2048-d features; with ``dim >= D``
    the residual space would be empty, so the ViM paper's rule for small feature spaces (half of D) is
    used instead, with a warning.
    """
    if dim < feature_dim:
        return int(dim)
    fallback = max(feature_dim // 2, 1)
    get_logger().warning("%s: dim=%d >= feature dimension %d; using dim=%d (D/2) instead",
                         method, dim, feature_dim, fallback)
    return fallback


def residual_basis(features: torch.Tensor, origin: torch.Tensor, dim: int) -> torch.Tensor:
    """Orthonormal basis [D, D - dim] of the residual space of ``features - origin``.

    The second moment ``(X - u)^T (X - u) / N`` is eigendecomposed; the eigenvectors of its ``dim``
    largest eigenvalues span the principal space and the remaining ones are returned.
    """
    x = features.detach().double().cpu() - origin.double().cpu()
    moment = (x.T @ x / len(x)).numpy()
    eig_vals, eig_vecs = np.linalg.eigh(moment)
    order = np.argsort(-eig_vals, kind="stable")
    return torch.from_numpy(np.ascontiguousarray(eig_vecs[:, order[dim:]]))


def residual_norm(features: torch.Tensor, origin: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``||(x - u) @ NS||_2`` per sample, float64 [N]."""
    return ((features.double() - origin.double()) @ basis.double()).norm(dim=1)


PCA_SOLVERS = ("auto", "gram", "full", "randomized")
#: the largest sample count for which ``auto`` takes the exact PCA through the sample Gram matrix: its
#: cost grows as N^2 D against the randomized solver's N D, and on 32,768-d features the two are equal
#: at about this N (one core: 0.45 against 1.12 s at N = 1,000, 1.8 against 2.1 s at 2,048)
GRAM_PCA_MAX_SAMPLES = 2048


def principal_axes(feats: np.ndarray, k: int, solver: str = "auto", dtype="float32", seed: int = 0) -> np.ndarray:
    """The first ``k`` principal axes of ``feats`` [N, D] (centred, as sklearn's PCA): float64 [D, k],
    orthonormal columns by decreasing variance, each signed so that its largest-magnitude entry is positive.

    ``solver``: ``gram`` is the exact PCA from the eigendecomposition of the N x N centred Gram matrix
    (the axes of ``full`` up to rounding, far cheaper when N is much below D); ``full`` and
    ``randomized`` are sklearn's ``svd_solver`` (``randomized`` seeded with ``seed``); ``auto`` takes
    ``gram`` when k < N <= min(D, :data:`GRAM_PCA_MAX_SAMPLES`), else sklearn's ``auto`` (randomized on
    large inputs). ``dtype`` (``float32``/``float64``) is the arithmetic of the centring and of the
    products over D; the N x N eigenproblem is solved in float64.
    """
    if solver not in PCA_SOLVERS:
        raise ValueError(f"pca_solver must be one of {PCA_SOLVERS}, got {solver!r}")
    n, d = feats.shape
    if solver == "auto":
        solver = "gram" if k < n <= min(d, GRAM_PCA_MAX_SAMPLES) else "auto"
    if solver == "gram" and k < n:
        x = feats.astype(dtype, copy=True)
        x -= x.mean(axis=0, dtype=np.float64).astype(dtype)
        vals, vecs = linalg.eigh((x @ x.T).astype(np.float64), subset_by_index=[n - k, n - 1])
        if vals[0] > 1e-9 * max(vals[-1], 0.0):  # all k axes carry variance: they are defined
            axes = (x.T @ vecs[:, ::-1].astype(dtype)).astype(np.float64)
            axes /= np.linalg.norm(axes, axis=0)
            return axes * np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(k)])
        solver = "full"  # fewer than k directions with variance: sklearn completes the basis
    from sklearn.decomposition import PCA  # its components follow the same sign rule
    pca = PCA(n_components=k, svd_solver="full" if solver == "gram" else solver, random_state=seed)
    return pca.fit(feats.astype(dtype, copy=False)).components_.T.astype(np.float64)


# ---------------------------------------------------------------------------- misc
def fit_outputs(train: NetOutputs | None, val: NetOutputs | None, which: str, method: str) -> NetOutputs:
    """The ID outputs a method fits on: ``which`` is ``train`` or ``val``.

    With ``val`` but no validation outputs given, falls back to the training outputs with a warning.
    """
    if which not in ("train", "val"):
        raise ValueError(f"{method}: fit_on must be 'train' or 'val', got {which!r}")
    if which == "val" and val is None:
        if train is None:
            raise ValueError(f"{method} needs ID validation (or training) outputs to fit")
        get_logger().warning("%s: no ID validation outputs given; fitting on ID training outputs", method)
        return train
    chosen = train if which == "train" else val
    if chosen is None:
        raise ValueError(f"{method} needs ID {which} outputs to fit")
    return chosen


def check_fitted(value, method: str) -> None:
    if value is None:
        raise RuntimeError(f"{method}: call fit() before score()")
