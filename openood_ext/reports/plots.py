"""Matplotlib figures (Agg backend, PNG, written atomically); every function returns the path it wrote.

* :func:`roc_plot`: ROC curve (OOD as positive) per OOD set for one postprocessor.
* :func:`histogram_plot`: ID vs OOD confidence histograms for one postprocessor.
* :func:`ad_class_roc_plot`: ROC curve per normal class for anomaly detection.
* :func:`heatmap_grid`: images over their anomaly heatmaps (FCDD/EOE).

Speed: figures use fixed margins instead of ``bbox_inches="tight"`` (which draws every figure twice) and
filled-step histograms (one polygon instead of a patch per bin); ROC curves with more than
``MAX_CURVE_POINTS`` points are thinned for drawing only (the AUROC in the legend uses every point).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..utils.io import write_with  # noqa: E402

MAX_CURVE_POINTS = 2000
DPI = 100


def roc_points(pos_scores: np.ndarray, neg_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every distinct threshold, ranking positives above negatives by score (higher = positive).

    The trapezoidal area under these points is scikit-learn's ``roc_auc_score``.
    """
    pos_scores, neg_scores = np.asarray(pos_scores, float).ravel(), np.asarray(neg_scores, float).ravel()
    if pos_scores.size == 0 or neg_scores.size == 0:
        raise ValueError("roc_points: needs at least one positive and one negative score")
    scores = np.r_[pos_scores, neg_scores]
    positive = np.r_[np.ones(len(pos_scores)), np.zeros(len(neg_scores))]
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], positive[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[last]
    fps = last + 1 - tps
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]


def _thin(fpr: np.ndarray, tpr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(fpr) <= MAX_CURVE_POINTS:
        return fpr, tpr
    idx = np.unique(np.r_[np.linspace(0, len(fpr) - 1, MAX_CURVE_POINTS).astype(int), len(fpr) - 1])
    return fpr[idx], tpr[idx]


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    try:
        write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    finally:
        plt.close(fig)
    return path


def _roc_axes(title: str, xlabel: str, ylabel: str):
    fig, ax = plt.subplots(figsize=(4.2, 4))
    fig.subplots_adjust(left=0.14, right=0.97, top=0.91, bottom=0.12)
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, xlim=(0, 1), ylim=(0, 1.01))
    return fig, ax


def roc_plot(id_conf: np.ndarray, ood_confs: Mapping[str, np.ndarray], title: str, path: str | Path,
             groups: Mapping[str, str] | None = None) -> Path:
    """One ROC curve per OOD set (OOD = positive, scored by ``-confidence``), AUROC (%) in the legend.

    ``groups`` (set -> "near"/"far") adds the group to each label.
    """
    fig, ax = _roc_axes(title, "FPR (ID flagged as OOD)", "TPR (OOD detected)")
    for name, conf in ood_confs.items():
        fpr, tpr = roc_points(-np.asarray(conf), -np.asarray(id_conf))
        tag = f", {groups[name]}" if groups and groups.get(name) else ""
        ax.plot(*_thin(fpr, tpr), lw=1.3, label=f"{name}{tag} (AUROC {100 * np.trapezoid(tpr, fpr):.1f})")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def histogram_plot(id_conf: np.ndarray, ood_confs: Mapping[str, np.ndarray], title: str, path: str | Path,
                   groups: Mapping[str, str] | None = None, bins: int = 50) -> Path:
    """Density histograms of ID test confidences (filled) and of each OOD set's (outlines), shared bins.

    The bin range covers the 0.5-99.5 percentiles of all confidences so that a few extreme scores do not
    squash the rest; values outside it are not drawn. When one bin towers over the rest (MSP piles most ID
    samples at 1.0) the density axis is logarithmic, so the other bins stay readable. The legend sits
    outside the axes, so it never covers a histogram.
    """
    fig, ax = plt.subplots(figsize=(6.2, 3.4))
    fig.subplots_adjust(left=0.1, right=0.72, top=0.9, bottom=0.15)
    id_conf = np.asarray(id_conf, float)
    everything = np.concatenate([id_conf, *[np.asarray(c, float) for c in ood_confs.values()]])
    lo, hi = np.percentile(everything, [0.5, 99.5])
    edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    ax.hist(id_conf, bins=edges, density=True, alpha=0.5, histtype="stepfilled", label="ID test",
            color="tab:blue")
    colors = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"][1:] * 4)
    for name, conf in ood_confs.items():
        tag = f" ({groups[name]})" if groups and groups.get(name) else ""
        ax.hist(np.asarray(conf, float), bins=edges, density=True, histtype="step", lw=1.3, label=f"{name}{tag}",
                color=next(colors))
    heights = np.concatenate([np.histogram(np.asarray(c, float), bins=edges, density=True)[0]
                              for c in (id_conf, *ood_confs.values()) if len(c)])
    positive = heights[heights > 0]
    log_axis = positive.size > 0 and positive.max() > 20 * np.median(positive)
    if log_axis:
        ax.set_yscale("log")
    ax.set(xlabel="confidence (higher = more ID)", ylabel="density (log scale)" if log_axis else "density",
           title=title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False)
    return _save(fig, path)


def ad_class_roc_plot(per_class: Mapping, path: str | Path, title: str = "one-vs-rest ROC") -> Path:
    """One ROC curve per normal class: ``per_class`` maps class -> (anomaly scores [N], labels [N], 1 = anomaly)."""
    fig, ax = _roc_axes(title, "FPR (normal flagged)", "TPR (anomalies detected)")
    for cls, (scores, labels) in per_class.items():
        scores, labels = np.asarray(scores, float), np.asarray(labels).astype(bool)
        if scores.shape != labels.shape:
            plt.close(fig)
            raise ValueError(f"ad_class_roc_plot: class {cls}: {scores.shape} scores but {labels.shape} labels")
        fpr, tpr = roc_points(scores[labels], scores[~labels])
        ax.plot(*_thin(fpr, tpr), lw=1, label=f"{cls} ({100 * np.trapezoid(tpr, fpr):.1f})")
    ax.legend(fontsize=6, ncol=2, loc="lower right", title="class (AUROC %)", title_fontsize=6)
    return _save(fig, path)


def heatmap_grid(images: np.ndarray, heatmaps: np.ndarray, path: str | Path, ncols: int = 8,
                 titles: list[str] | None = None, shared_scale: bool = True) -> Path:
    """A grid of images [N, C, H, W] (C = 1 or 3, values in [0, 1]) each above its heatmap [N, H, W].

    With ``shared_scale`` every heatmap uses one colour scale (min/max over all of them), so that heat is
    comparable across images, as FCDD draws them; otherwise each is scaled to its own range.
    """
    images, heatmaps = np.asarray(images), np.asarray(heatmaps)
    if (images.ndim != 4 or images.shape[1] not in (1, 3) or heatmaps.shape != (images.shape[0], *images.shape[2:])
            or len(images) == 0):
        raise ValueError(f"heatmap_grid: need images [N,C,H,W] with C 1 or 3 and heatmaps [N,H,W], got "
                         f"{images.shape} and {heatmaps.shape}")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"heatmap_grid: {len(titles)} titles for {len(images)} images")
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = 2 * int(np.ceil(n / ncols))
    vmin, vmax = (float(np.min(heatmaps)), float(np.max(heatmaps))) if shared_scale else (None, None)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.3 * ncols, 1.3 * nrows), squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.97, bottom=0.01, wspace=0.05, hspace=0.15)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, c = 2 * (i // ncols), i % ncols
        img = np.clip(images[i].transpose(1, 2, 0), 0, 1)
        if img.shape[2] == 1:
            axes[r, c].imshow(img[..., 0], cmap="gray", vmin=0, vmax=1)
        else:
            axes[r, c].imshow(img)
        axes[r + 1, c].imshow(heatmaps[i], cmap="jet", vmin=vmin, vmax=vmax)
        if titles:
            axes[r, c].set_title(str(titles[i]), fontsize=6)
    return _save(fig, path)
