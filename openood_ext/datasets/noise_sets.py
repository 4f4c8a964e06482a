"""The synthetic OOD sets of VMDLS's MNIST benchmark (Dinari & Freifeld, UAI 2022; ``BGU-CS-VIL/vmdls``
``data/datasets.py``), generated offline and deterministically as 8-bit PNG files plus an image list, so that
any benchmark can name them as an ordinary OOD split.

Two sets (``kind``):

* ``noisy`` ("MNIST+noise"; works on any grayscale/RGB source list, e.g. Fashion-MNIST's test list):
  every source image plus uniform noise. The published code adds u ~ U[0, 1) per pixel to the *normalised*
  image (mean 0.5, std 0.5: a shift of up to 1 normalised unit = up to ``std`` in pixel units), so the
  pixel written is ``x + std * u`` with x, u in [0, 1]. An image file cannot hold values above 1, so the
  result is **clipped to [0, 1]** and quantised to 8 bits: exact where x + std*u <= 1 (the black background
  of MNIST) and saturated on bright strokes, where the code's input exceeds the normalised range.
* ``uniform`` ("noise"): ``count`` images of i.i.d. U[0, 1) pixels. ``published=False`` (default, the
  intended set): the pixels themselves are uniform and go through the benchmark's normalisation like every
  image. ``published=True``: the code feeds its U[0, 1) tensor to the network *without* normalisation; the
  pixels written are ``mean + std * u`` so that, after the benchmark's normalisation with that mean/std,
  the network sees the code's U[0, 1) input (with mean = std = 0.5: pixels in [0.5, 1)).

Deviation, stated: the code redraws the noise on every access (so every evaluation sees other images);
here one ``seed`` fixes every pixel, so runs are comparable. One ``numpy.random.Generator(seed)`` draws the
images in list order, so a set is bit-identical across machines for a given numpy.

Layout written (``write_noise_set``): images under ``<data_root>/<image_dir>/<name>/<index:05d>.png`` and the
list ``<data_root>/benchmark_imglist/<benchmark>/test_<name>.txt`` (``<name>/<index>.png 0`` lines, the
OpenOOD convention for OOD lists; the label is ignored for OOD splits).

CLI::

    python -m openood_ext.datasets.noise_sets --root data --benchmark vmdls_fmnist --kind noisy \\
        --name fmnist_noise --source-list data/benchmark_imglist/fmnist/test_fashionmnist.txt
    python -m openood_ext.datasets.noise_sets --root data --benchmark vmdls_fmnist --kind uniform \\
        --name noise --count 10000 --size 28 --channels 1
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ConfigError, DataError
from ..utils.io import write_stream, write_text
from .image_modes import convert_image
from .imglist import read_imglist

KINDS = ("noisy", "uniform")


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def uniform_noise(count: int, size: int, channels: int, seed: int, published: bool = False,
                  mean: float | list[float] = 0.5, std: float | list[float] = 0.5) -> np.ndarray:
    """``count`` uint8 noise images [count, size, size, channels] (see the module docstring)."""
    if count < 1 or size < 1 or channels not in (1, 3):
        raise ConfigError(f"noise set: expected count >= 1, size >= 1 and channels 1 or 3, "
                          f"got count={count}, size={size}, channels={channels}")
    u = np.random.default_rng(seed).random((count, size, size, channels))
    if published:
        u = np.asarray(mean, dtype=np.float64) + np.asarray(std, dtype=np.float64) * u
    return _to_uint8(u)


def add_noise(images: np.ndarray, rng: np.random.Generator, std: float | list[float] = 0.5) -> np.ndarray:
    """uint8 images [N, H, W, C] plus ``std`` * U[0, 1) per pixel, clipped to [0, 1] (uint8 out)."""
    x = images.astype(np.float64) / 255.0
    return _to_uint8(x + np.asarray(std, dtype=np.float64) * rng.random(x.shape))


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    write_stream(path, lambda fh: image.save(fh, format="PNG"))


def write_noise_set(kind: str, data_root: str | os.PathLike, benchmark: str, name: str | None = None, *,
                    image_dir: str = "images_classic", source_list: str | os.PathLike | None = None,
                    source_root: str | os.PathLike | None = None, count: int = 10000, size: int = 28,
                    channels: int = 1, seed: int = 0, published: bool = False,
                    mean: float | list[float] = 0.5, std: float | list[float] = 0.5) -> Path:
    """Write one noise set (images + image list) and return the image list's path.

    Args:
        kind: ``noisy`` (needs ``source_list``) or ``uniform``.
        data_root: the benchmark's data root; images go under ``data_root/image_dir/name``.
        benchmark: the image list goes to ``data_root/benchmark_imglist/<benchmark>/test_<name>.txt``.
        name: set name (default ``noisy``: ``<source set>_noise``; ``uniform``: ``noise``).
        source_list, source_root: the clean images (``noisy``); paths in the list are relative to
            ``source_root`` (default ``data_root/image_dir``). Images are read as grayscale when
            ``channels`` is 1, else RGB.
        count, size, channels: the ``uniform`` set's shape.
        seed: the numpy generator's seed.
        published, mean, std: see the module docstring (``std`` also scales the ``noisy`` noise).
    """
    if kind not in KINDS:
        raise ConfigError(f"noise set kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    root = Path(data_root)
    images_root = root / image_dir
    if kind == "noisy":
        if source_list is None:
            raise ConfigError("noise set 'noisy': needs source_list (the clean images' image list)")
        entries = read_imglist(source_list)
        if not entries:
            raise DataError(f"{source_list}: image list is empty")
        src_root = Path(source_root) if source_root else images_root
        name = name or f"{Path(entries[0].path).parts[0]}_noise"
        rng = np.random.default_rng(seed)
        mode = "L" if channels == 1 else "RGB"
        arrays = []
        for e in entries:
            p = src_root / e.path
            if not p.is_file():
                raise DataError(f"{source_list}:{e.line}: image {p} not found")
            with Image.open(p) as im:
                a = np.asarray(convert_image(im, mode, p))
            arrays.append(add_noise(a.reshape(a.shape[0], a.shape[1], channels)[None], rng, std)[0])
    else:
        name = name or "noise"
        arrays = uniform_noise(count, size, channels, seed, published, mean, std)
    rel = [f"{name}/{i:05d}.png" for i in range(len(arrays))]
    for r, a in zip(rel, arrays):
        _save(a, images_root / r)
    imglist = root / "benchmark_imglist" / benchmark / f"test_{name}.txt"
    imglist.parent.mkdir(parents=True, exist_ok=True)
    write_text(imglist, "".join(f"{r} 0\n" for r in rel))
    return imglist


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m openood_ext.datasets.noise_sets",
                                 description="Write a deterministic noise OOD set (VMDLS's MNIST+noise / noise).")
    ap.add_argument("--root", required=True, help="data root (as benchmark.data_root)")
    ap.add_argument("--benchmark", required=True, help="image list folder: <root>/benchmark_imglist/<benchmark>/")
    ap.add_argument("--kind", required=True, choices=KINDS)
    ap.add_argument("--name", default=None)
    ap.add_argument("--image-dir", default="images_classic")
    ap.add_argument("--source-list", default=None)
    ap.add_argument("--source-root", default=None)
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--published", action="store_true", help="uniform: the code's unnormalised U[0,1) input")
    ap.add_argument("--mean", type=float, nargs="+", default=[0.5])
    ap.add_argument("--std", type=float, nargs="+", default=[0.5])
    a = ap.parse_args(argv)
    try:
        out = write_noise_set(a.kind, a.root, a.benchmark, a.name, image_dir=a.image_dir, source_list=a.source_list,
                              source_root=a.source_root, count=a.count, size=a.size, channels=a.channels,
                              seed=a.seed, published=a.published, mean=a.mean, std=a.std)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({sum(1 for _ in open(out))} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
