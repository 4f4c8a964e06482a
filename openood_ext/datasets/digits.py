"""The embedded ``digits`` benchmark: built from images that ship inside installed packages.

* ID: scikit-learn's 8x8 handwritten digits of classes 0-5 (train/val/test = 60/10/30 % per class).
* near-OOD ``digits6to9``: the held-out digit classes 6-9.
* far-OOD ``textures``: 8x8 patches of scikit-image's brick, grass and gravel textures.
* far-OOD ``photos``: 8x8 patches of scikit-image / scikit-learn photographs (camera, astronaut, coffee,
  chelsea, horse, rocket, china, flower).
* OOD validation ``val_ood``: patches of other scikit-image pictures (coins, moon, page, text, clock),
  used only for parameter search.
* outlier exposure ``oe``: patches of yet other pictures (Hubble deep field, immunohistochemistry, retina,
  Shepp-Logan phantom, colour wheel), disjoint from every test and validation set; for training with
  outliers only (``benchmark.oe``).

Patches are area-averaged from 24x24 crops and contrast-stretched to the digits' 0-16 range, so a
detector cannot separate them by brightness alone. Everything is generated deterministically (seeded
PCG64) as 8x8 grayscale PNGs under ``<data_root>/digits/``; the image lists are committed in
``benchmark_imglist/digits/`` and regenerated identically.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from ..utils.io import write_text
from ..utils.runtime import get_logger
from .benchmark import Benchmark
from .registry import BENCHMARKS

GENERATOR_VERSION = "2"
ID_CLASSES = (0, 1, 2, 3, 4, 5)
SPLIT_FRACTIONS = (0.6, 0.1, 0.3)  # train, val, test
PATCH_SOURCES = {
    "textures": ("brick", "grass", "gravel"),
    "photos": ("camera", "astronaut", "coffee", "chelsea", "horse", "rocket", "sk:china", "sk:flower"),
    "val_ood": ("coins", "moon", "page", "text", "clock"),
}
# Drawn from its own random stream, so adding it left the other sets unchanged.
OE_SOURCES = ("hubble_deep_field", "immunohistochemistry", "retina", "shepp_logan_phantom", "colorwheel")
PATCHES_PER_SET = {"textures": 300, "photos": 300, "val_ood": 150, "oe": 300}
IMGLIST_FILES = {
    "train": "train_digits.txt", "val": "val_digits.txt", "test": "test_digits.txt",
    "val_ood": "val_ood.txt", "digits6to9": "test_near_digits6to9.txt",
    "textures": "test_far_textures.txt", "photos": "test_far_photos.txt", "oe": "train_oe.txt",
}


def _gray_source(name: str) -> np.ndarray:
    """A bundled picture as float grayscale in [0, 1]."""
    if name.startswith("sk:"):
        from sklearn.datasets import load_sample_image
        img = load_sample_image(f"{name[3:]}.jpg")
    else:
        import skimage.data
        img = getattr(skimage.data, name)()
    img = np.asarray(img, dtype=np.float64)
    if img.ndim == 3:
        img = img[..., :3] @ np.array([0.299, 0.587, 0.114])
    return (img - img.min()) / max(img.max() - img.min(), 1e-9)


def _patches(sources: tuple[str, ...], count: int, rng: np.random.Generator, crop: int = 24) -> list[np.ndarray]:
    """``count`` 8x8 patches in the digits' 0-16 range, drawn round-robin from ``sources``."""
    pictures = [_gray_source(s) for s in sources]
    out = []
    for i in range(count):
        pic = pictures[i % len(pictures)]
        y = rng.integers(0, pic.shape[0] - crop + 1)
        x = rng.integers(0, pic.shape[1] - crop + 1)
        block = pic[y:y + crop, x:x + crop].reshape(8, crop // 8, 8, crop // 8).mean(axis=(1, 3))
        lo, hi = np.percentile(block, [2, 98])
        out.append(np.clip((block - lo) / max(hi - lo, 1e-6), 0, 1) * 16.0)
    return out


def _to_png(values_0_16: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(values_0_16 * (255.0 / 16.0)).astype(np.uint8), mode="L").save(path)


def generate_digits(out_root: Path, seed: int = 0) -> dict[str, list[str]]:
    """Write all images under ``out_root/digits`` and return the image-list lines per list name."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    data = load_digits()
    images, targets = data.images, data.target
    lists: dict[str, list[str]] = {k: [] for k in IMGLIST_FILES}

    for cls in ID_CLASSES:
        idx = rng.permutation(np.nonzero(targets == cls)[0])
        n_train = int(round(SPLIT_FRACTIONS[0] * len(idx)))
        n_val = int(round(SPLIT_FRACTIONS[1] * len(idx)))
        parts = {"train": idx[:n_train], "val": idx[n_train:n_train + n_val], "test": idx[n_train + n_val:]}
        for split, members in parts.items():
            for i in sorted(members):
                rel = f"digits/id/{cls}/{i:04d}.png"
                _to_png(images[i], out_root / rel)
                lists[split].append(f"{rel} {cls}")
    for i in np.nonzero(~np.isin(targets, ID_CLASSES))[0]:
        rel = f"digits/near_digits6to9/{targets[i]}/{i:04d}.png"
        _to_png(images[i], out_root / rel)
        lists["digits6to9"].append(f"{rel} 0")
    for set_name, sources in PATCH_SOURCES.items():
        for j, patch in enumerate(_patches(sources, PATCHES_PER_SET[set_name], rng)):
            rel = f"digits/{set_name}/{j:04d}.png"
            _to_png(patch, out_root / rel)
            lists[set_name].append(f"{rel} 0")
    oe_rng = np.random.default_rng(seed + 1)
    for j, patch in enumerate(_patches(OE_SOURCES, PATCHES_PER_SET["oe"], oe_rng)):
        rel = f"digits/oe/{j:04d}.png"
        _to_png(patch, out_root / rel)
        lists["oe"].append(f"{rel} 0")
    return {k: sorted(v) for k, v in lists.items()}


def write_imglists(lists: dict[str, list[str]], imglist_dir: Path) -> None:
    for key, fname in IMGLIST_FILES.items():
        write_text(imglist_dir / fname, "\n".join(lists[key]) + "\n")


@BENCHMARKS.register("digits")
class DigitsBenchmark(Benchmark):
    """Embedded default benchmark: sklearn digits 0-5 vs 6-9 (near) and bundled textures/photos (far)."""

    def prepare(self) -> None:
        """Generate the images under ``data_root/digits`` unless a complete copy is already there."""
        marker = self.data_root / "digits" / f".complete-v{GENERATOR_VERSION}"
        if marker.exists():
            return
        get_logger().info("materialising the digits benchmark under %s (first use)", self.data_root / "digits")
        try:
            self.data_root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".digits-", dir=self.data_root))
        except OSError as exc:
            raise DataError(f"data_root {self.data_root}: cannot write there ({exc.strerror or exc}); set "
                            f"benchmark.data_root or OPENOOD_EXT_DATA to a writable directory") from None
        try:
            lists = generate_digits(staging)
            (staging / "digits" / marker.name).touch()
            target = self.data_root / "digits"
            if target.exists():
                shutil.rmtree(target)
            (staging / "digits").rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if not all((self.imglist_dir / f).is_file() for f in IMGLIST_FILES.values()):
            write_imglists(lists, self.imglist_dir)
