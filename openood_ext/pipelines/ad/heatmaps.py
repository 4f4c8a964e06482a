"""FCDD-style heatmap grids: normal and anomalous test samples with their heatmaps.

Display normalisation (FCDD ``training/bases.py``), heat higher = more anomalous:

* local: per map, subtract its min, divide by its q-quantile (``kthvalue(int(q N))``), clamp to [0, 1];
* global: the min and the q-quantile come from all test maps, label-balanced (an equal number of maps
  of each label, at most ``max_maps`` each, seeded), then the same transform for every map.

Files written to a cell directory: ``heatmaps_paper_{local,global}_lbl{0,1}.png`` (``n`` samples of the
label at equidistant score ranks, least to most anomalous, as FCDD's paper figures) and
``heatmaps_extremes_global.png`` (per label, the ``n`` least then the ``n`` most anomalous samples).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ...reports.plots import heatmap_grid


def _kth(values: torch.Tensor, q: float) -> torch.Tensor:
    """FCDD's quantile: the ``int(q N)``-th smallest value (1-based, at least the 1st)."""
    flat = values.reshape(values.shape[0], -1)
    k = max(1, int(q * flat.shape[1]))
    return flat.kthvalue(k, dim=1).values


def normalise_local(maps: np.ndarray, q: float) -> np.ndarray:
    """Per map [N, H, W]: (m - min) / quantile_q(m - min), clamped to [0, 1]."""
    t = torch.as_tensor(np.asarray(maps, np.float32))
    t = t - t.flatten(1).min(1).values.view(-1, 1, 1)
    return (t / _kth(t, q).clamp(min=1e-12).view(-1, 1, 1)).clamp(0, 1).numpy()


def global_stats(heat: np.ndarray, labels: np.ndarray, q: float, max_maps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """(min, q-quantile of map - min) over a label-balanced sample of the maps."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == lab) for lab in np.unique(labels)]
    n = min(max_maps, min(len(g) for g in groups))
    rows = np.sort(np.concatenate([rng.choice(g, n, replace=False) for g in groups]))
    sample = torch.as_tensor(np.asarray(heat[rows], np.float32))
    lo = float(sample.min())
    return lo, float(_kth((sample - lo).reshape(1, -1), q)[0])


def normalise_global(maps: np.ndarray, lo: float, qv: float) -> np.ndarray:
    return np.clip((np.asarray(maps, np.float32) - lo) / max(qv, 1e-12), 0, 1)


def ranked_rows(scores: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """``n`` of ``rows`` at equidistant ranks of their scores (least anomalous first)."""
    order = rows[np.argsort(scores[rows], kind="stable")]
    pick = np.unique(np.linspace(0, len(order) - 1, min(n, len(order))).round().astype(int))
    return order[pick]


def save_heatmap_grids(cell: Path, heat: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                       load_images: Callable[[np.ndarray], np.ndarray], n: int, q: float, title: str = "") -> list[Path]:
    """Write the grids described in the module doc; ``load_images(rows)`` -> images [k, C, H, W] in [0, 1]."""
    written = []
    lo, qv = global_stats(heat, labels, q) if len(np.unique(labels)) > 1 else (float(np.min(heat)), 1.0)
    extremes = []
    for lab in (0, 1):
        rows = np.flatnonzero(labels == lab)
        if not len(rows):
            continue
        pick = ranked_rows(scores, rows, n)
        images = load_images(pick)
        titles = [f"{scores[r]:.3g}" for r in pick]
        maps = np.asarray(heat[pick])
        for kind, normed in (("local", normalise_local(maps, q)), ("global", normalise_global(maps, lo, qv))):
            written.append(heatmap_grid(images, normed, cell / f"heatmaps_paper_{kind}_lbl{lab}.png",
                                        ncols=len(pick), titles=titles, shared_scale=kind == "global"))
        order = rows[np.argsort(scores[rows], kind="stable")]
        extremes.extend(order[:n].tolist() + order[-n:][::-1].tolist())
    if extremes:
        ext = np.asarray(extremes)
        written.append(heatmap_grid(load_images(ext), normalise_global(np.asarray(heat[ext]), lo, qv),
                                    cell / "heatmaps_extremes_global.png", ncols=n,
                                    titles=[f"{'A' if labels[r] else 'N'} {scores[r]:.3g}" for r in ext]))
    return written
