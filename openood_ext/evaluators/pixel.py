"""The ``pixel`` evaluator: pixel-level AUROC of anomaly heatmaps against ground-truth masks (FCDD).

Every pixel is a sample; its heat (higher = more anomalous) ranks it against its mask value (1 = anomalous).
The AUROC equals scikit-learn's ``roc_auc_score(masks.ravel(), heatmaps.ravel())`` (ties count one half),
but it is computed without flattening, copying or sorting all pixels (MVTec-AD's test set alone has
~1.7 G pixels at full resolution):

1. one pass over the images in chunks checks that every heat value is finite and collects the pixels of
   the *smaller* class (usually the anomalous ones) into one sorted array;
2. a second pass counts, for each pixel of the larger class (chunk by chunk), how many pixels of the
   smaller class rank above / tie with it (``np.searchsorted``): the Mann-Whitney U statistic, exactly.

Memory is 8 bytes per pixel of the smaller class plus a chunk (``chunk_pixels``), never the whole input
(which may be a ``np.memmap``). Only when the smaller class has more than ``max_pixels`` pixels is it
*subsampled* (a seeded Bernoulli sample of about ``max_pixels`` of them; every pixel of the larger class
still counts); the result then says ``exact: false``. With the default of 50 M that needs two classes of
more than 50 M pixels each.
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .metrics import check_scores
from .registry import EVALUATORS


@EVALUATORS.register("pixel")
class PixelEvaluator:
    """Pixel AUROC of heatmaps [N,H,W] vs masks [N,H,W]: exact and memory-bounded (see the module doc).

    Args:
        max_pixels: most pixels of the smaller class held in memory (8 bytes each); beyond it that class
            is subsampled (seeded) and the result is marked ``exact: false``.
        chunk_pixels: pixels processed at once in each pass.
        seed: seed of the subsample.
    """

    family = "arrays"  # the contract of the evaluators package docstring

    def __init__(self, max_pixels: int = 50_000_000, chunk_pixels: int = 4_000_000, seed: int = 0):
        if int(max_pixels) < 1 or int(chunk_pixels) < 1:
            raise ValueError(f"max_pixels and chunk_pixels must be positive, got {max_pixels}, {chunk_pixels}")
        self.max_pixels, self.chunk_pixels, self.seed = int(max_pixels), int(chunk_pixels), int(seed)

    def evaluate(self, heatmaps: np.ndarray, masks: np.ndarray, method: str = "heatmap",
                 split: str = "test") -> dict:
        """heatmaps [N, H, W] (higher = anomalous), masks [N, H, W] in {0, 1}.

        Returns ``{"pixel_auroc", "n_pixels", "n_anomalous", "exact", "n_sampled"}``; ``n_sampled`` is
        the number of pixels of the smaller class used (all of them when ``exact``).
        Raises DataError (naming ``method`` and ``split``) for mismatched shapes, masks that are not
        binary, NaN/Inf heat, or masks with a single class.
        """
        where = f"heatmaps of '{method}' on '{split}'"
        heat, mask = heatmaps, masks
        if not hasattr(heat, "shape"):
            heat = np.asarray(heat)
        if not hasattr(mask, "shape"):
            mask = np.asarray(mask)
        if heat.shape != mask.shape or len(heat.shape) != 3:
            raise DataError(f"{where}: heatmaps {tuple(heat.shape)} and masks {tuple(mask.shape)} "
                            f"must both be [N, H, W]")
        n_pix = int(np.prod(heat.shape))
        if n_pix == 0:
            raise DataError(f"{where}: no pixels")
        per_image = max(1, int(np.prod(heat.shape[1:])))
        step = max(1, self.chunk_pixels // per_image)
        chunks = [slice(i, min(i + step, heat.shape[0])) for i in range(0, heat.shape[0], step)]

        def chunk(sl: slice) -> tuple[np.ndarray, np.ndarray]:
            h = np.asarray(heat[sl], dtype=np.float64).reshape(-1)
            m = np.asarray(mask[sl]).reshape(-1)
            return h, m

        # pass 1: validate, count the classes
        n_pos = 0
        for sl in chunks:
            h, m = chunk(sl)
            try:
                check_scores(h, where)
            except ValueError as exc:
                raise DataError(f"{exc} (images {sl.start}..{sl.stop - 1})") from None
            if m.dtype != bool and not np.isin(m, (0, 1)).all():
                bad = np.unique(m[~np.isin(m, (0, 1))])[:5]
                raise DataError(f"{where}: masks must be binary (0/1), found values {bad.tolist()}")
            n_pos += int(np.count_nonzero(m))
        n_neg = n_pix - n_pos
        if n_pos == 0 or n_neg == 0:
            raise DataError(f"{where}: masks hold only {'anomalous' if n_neg == 0 else 'normal'} pixels; "
                            f"pixel AUROC needs both classes, but only one is present")

        # the smaller class, sorted (subsampled only when it does not fit in max_pixels)
        small_is_pos = n_pos <= n_neg
        n_small = n_pos if small_is_pos else n_neg
        exact = n_small <= self.max_pixels
        keep_p = 1.0 if exact else self.max_pixels / n_small
        rng = np.random.default_rng(self.seed)
        parts = []
        for sl in chunks:
            h, m = chunk(sl)
            sel = m.astype(bool) if small_is_pos else ~m.astype(bool)
            vals = h[sel]
            if not exact:
                vals = vals[rng.random(vals.size) < keep_p]
            parts.append(vals)
        small = np.sort(np.concatenate(parts))
        del parts
        if small.size == 0:  # only possible when subsampling an extreme max_pixels
            raise DataError(f"{where}: the subsample of the smaller class is empty; raise max_pixels")

        # pass 2: Mann-Whitney U = #(pos > neg) + 0.5 #(pos == neg), over every pixel of the larger class
        above = ties = 0
        for sl in chunks:
            h, m = chunk(sl)
            vals = h[~m.astype(bool)] if small_is_pos else h[m.astype(bool)]
            vals.sort()  # sorted queries make searchsorted cache-friendly (~5x faster); the sums do not change
            left = np.searchsorted(small, vals, side="left")
            right = np.searchsorted(small, vals, side="right")
            ties += int((right - left).sum())
            # positives ranked above a negative: smaller class = positives -> those right of it;
            # smaller class = negatives -> those left of a positive
            above += int((small.size - right).sum()) if small_is_pos else int(left.sum())
        n_large = n_neg if small_is_pos else n_pos
        value = (above + 0.5 * ties) / (float(small.size) * float(n_large))
        return {"pixel_auroc": float(value), "n_pixels": n_pix, "n_anomalous": n_pos, "exact": bool(exact),
                "n_sampled": int(small.size)}
