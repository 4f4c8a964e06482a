"""Matplotlib figures (Agg backend, PNG, written atomically).

* :func:`roc_plot`: ROC curve (OOD as positive) per OOD set for one postprocessor.
* :func:`histogram_plot`: ID vs OOD confidence histograms for one postprocessor.
* :func:`ad_class_roc_plot`: ROC curve per normal class for anomaly detection.
* :func:`heatmap_grid`: images with their anomaly heatmaps overlaid (FCDD/EOE).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..utils.io import write_with  # noqa: E402


def _roc_points(pos_scores: np.ndarray, neg_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) of ranking positives above negatives by score (higher = positive)."""
    scores = np.r_[pos_scores, neg_scores]
    positive = np.r_[np.ones(len(pos_scores)), np.zeros(len(neg_scores))]
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], positive[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[last]
    fps = last + 1 - tps
    return np.r_[0, fps / max(fps[-1], 1)], np.r_[0, tps / max(tps[-1], 1)]


def _save(fig, path: Path) -> Path:
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    plt.close(fig)
    return path


def roc_plot(id_conf: np.ndarray, ood_confs: dict[str, np.ndarray], title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4.2, 4))
    for name, conf in ood_confs.items():
        fpr, tpr = _roc_points(-conf, -id_conf)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {100 * np.trapezoid(tpr, fpr):.1f})")
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
    ax.set(xlabel="FPR (ID flagged as OOD)", ylabel="TPR (OOD detected)", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def histogram_plot(id_conf: np.ndarray, ood_confs: dict[str, np.ndarray], title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.4))
    everything = np.concatenate([id_conf, *ood_confs.values()])
    lo, hi = np.percentile(everything, [0.5, 99.5])
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 50)
    ax.hist(id_conf, bins=bins, density=True, alpha=0.55, label="ID test", color="tab:blue")
    for name, conf in ood_confs.items():
        ax.hist(conf, bins=bins, density=True, histtype="step", lw=1.4, label=name)
    ax.set(xlabel="confidence (higher = more ID)", ylabel="density", title=title)
    ax.legend(fontsize=7)
    return _save(fig, path)


def ad_class_roc_plot(per_class: dict, path: Path, title: str = "one-vs-rest ROC") -> Path:
    """per_class: class -> (anomaly scores [N], labels [N], 1 = anomaly)."""
    fig, ax = plt.subplots(figsize=(4.2, 4))
    for cls, (scores, labels) in per_class.items():
        labels = np.asarray(labels).astype(bool)
        fpr, tpr = _roc_points(np.asarray(scores)[labels], np.asarray(scores)[~labels])
        ax.plot(fpr, tpr, lw=1, label=f"{cls} ({100 * np.trapezoid(tpr, fpr):.1f})")
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
    ax.set(xlabel="FPR", ylabel="TPR", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=6, ncol=2, loc="lower right")
    return _save(fig, path)


def heatmap_grid(images: np.ndarray, heatmaps: np.ndarray, path: Path, ncols: int = 8,
                 titles: list[str] | None = None) -> Path:
    """images [N, C, H, W] in [0, 1] (C = 1 or 3), heatmaps [N, H, W]: image row over heatmap row."""
    images, heatmaps = np.asarray(images), np.asarray(heatmaps)
    if images.ndim != 4 or heatmaps.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"heatmap_grid: need images [N,C,H,W] and heatmaps [N,H,W], got {images.shape}, {heatmaps.shape}")
    n = len(images)
    ncols = min(ncols, n)
    nrows = 2 * int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.4 * ncols, 1.4 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, c = 2 * (i // ncols), i % ncols
        img = images[i].transpose(1, 2, 0)
        axes[r, c].imshow(img[..., 0] if img.shape[2] == 1 else np.clip(img, 0, 1), cmap="gray")
        axes[r + 1, c].imshow(heatmaps[i], cmap="jet")
        if titles:
            axes[r, c].set_title(titles[i], fontsize=6)
    return _save(fig, path)
