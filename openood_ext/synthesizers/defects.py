"""A small deterministic synthetic defect set (textures with pasted defects and their masks), generated
offline, in the ``ad_folder`` normal/anomalous layout, so that FCDD's pixel path (heatmaps vs
ground-truth masks, pixel AUROC) is tested end to end without MVTec-AD::

    <root>/train/<texture>/normal/*.png        normal textures
    <root>/train/<texture>/anomalous/*.png     a few defective ones (for supervise_mode: other)
    <root>/test/<texture>/normal/*.png
    <root>/test/<texture>/anomalous/*.png      textures with one pasted defect each
    <root>/test/<texture>/anomalous_gt/*.png   its mask (255 = defect pixel)

Textures: ``stripes`` (random phase/period sinusoidal stripes) and ``dots`` (a jittered grid of blobs),
with pixel noise. A defect is a filled rectangle or ellipse (random size 20-35 % of the side, random
position, intensity far from the texture's local mean). Same ``seed`` -> byte-identical files.

    python -m openood_ext.synthesizers.defects OUT_DIR [--size 28] [--channels 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from ..utils.io import write_stream

TEXTURES = ("stripes", "dots")


def texture(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A [size, size] float texture in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    if kind == "stripes":
        period = rng.uniform(5, 8)
        angle = rng.uniform(-0.3, 0.3)
        img = 0.5 + 0.35 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + rng.uniform(0, 2 * np.pi))
    elif kind == "dots":
        img = np.full((size, size), 0.25)
        step = max(4, size // 5)
        for cy in range(step // 2, size, step):
            for cx in range(step // 2, size, step):
                jy, jx = rng.uniform(-1, 1, 2)
                img += 0.5 * np.exp(-(((yy - cy - jy) ** 2 + (xx - cx - jx) ** 2) / (2 * (step / 5) ** 2)))
    else:
        raise ValueError(f"unknown texture {kind!r} (known: {', '.join(TEXTURES)})")
    return np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1)


def paste_defect(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image with one defect, mask [H, W] bool)."""
    size = img.shape[0]
    h, w = rng.integers(int(0.2 * size), int(0.35 * size) + 1, 2)
    y0, x0 = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
    yy, xx = np.mgrid[0:size, 0:size]
    if rng.random() < 0.5:
        mask = (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)
    else:
        cy, cx = y0 + (h - 1) / 2, x0 + (w - 1) / 2
        mask = ((yy - cy) / (h / 2)) ** 2 + ((xx - cx) / (w / 2)) ** 2 <= 1
    value = 0.95 if img[mask].mean() < 0.5 else 0.05
    out = img.copy()
    out[mask] = value + rng.normal(0, 0.02, int(mask.sum()))
    return np.clip(out, 0, 1), mask


def _save(arr: np.ndarray, path: Path, channels: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    u8 = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    if channels == 3:
        u8 = np.repeat(u8[..., None], 3, axis=2)
    image = Image.fromarray(u8)
    write_stream(path, lambda fh: image.save(fh, format="PNG"))


def make_defect_set(root: str | Path, size: int = 28, channels: int = 1, n_train: int = 40, n_train_anomalous: int = 4,
                    n_test_normal: int = 10, n_test_anomalous: int = 10, seed: int = 0,
                    textures: tuple[str, ...] = TEXTURES) -> Path:
    """Write the set (see the module doc) under ``root``; returns ``root``."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    root = Path(root)
    for t_idx, kind in enumerate(textures):
        rng = np.random.default_rng([seed, t_idx])
        for i in range(n_train):
            _save(texture(kind, size, rng), root / "train" / kind / "normal" / f"{i:04d}.png", channels)
        for i in range(n_train_anomalous):
            img, _ = paste_defect(texture(kind, size, rng), rng)
            _save(img, root / "train" / kind / "anomalous" / f"{i:04d}.png", channels)
        for i in range(n_test_normal):
            _save(texture(kind, size, rng), root / "test" / kind / "normal" / f"{i:04d}.png", channels)
        for i in range(n_test_anomalous):
            img, mask = paste_defect(texture(kind, size, rng), rng)
            _save(img, root / "test" / kind / "anomalous" / f"{i:04d}.png", channels)
            _save(mask.astype(np.float64), root / "test" / kind / "anomalous_gt" / f"{i:04d}.png", 1)
    return root


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="write the synthetic defect set (ad_folder layout)")
    ap.add_argument("out")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--channels", type=int, default=1, choices=(1, 3))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(make_defect_set(args.out, args.size, args.channels, seed=args.seed))


if __name__ == "__main__":
    main()
