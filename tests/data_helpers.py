"""Tiny archives and the real data beside the repository, for the data-preparation tests."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA
from PIL import Image

from openood_ext.datasets.prepare import archives

SHARED = SHARED_DATA


def need_shared(name: str) -> Path:
    path = SHARED / name
    if not path.is_file():
        pytest.skip(f"real data {path} not available (set OPENOOD_EXT_SHARED to the folder holding {name})")
    return path


def png_bytes(seed: int, size: int = 8, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, format="PNG")
    return buf.getvalue()


def make_tar(path: Path, members: dict[str, bytes], compression: str = "") -> Path:
    with tarfile.open(path, f"w:{compression}" if compression else "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def cifar_like_tars(tmp: Path, n_train: int = 3, n_test: int = 105) -> tuple[Path, Path]:
    """Tiny stand-ins for ../shared/data/cifar10_{train,test}.tar: every CIFAR-10 class, few images."""
    train = {f"cifar10/train/{c}/{i:04d}.jpg": png_bytes(100 * k + i)
             for k, c in enumerate(archives.CIFAR10_CLASSES) for i in range(n_train)}
    test = {f"cifar10/test/{c}/{i:04d}.jpg": png_bytes(10_000 + 100 * k + i)
            for k, c in enumerate(archives.CIFAR10_CLASSES) for i in range(n_test)}
    return make_tar(tmp / "c10_train.tar", train), make_tar(tmp / "c10_test.tar", test)


def random_png_list(root: Path, n: int, classes: int = 3, folder: str = "img", list_name: str = "list.txt",
                    seed: int = 0, size: int = 8) -> Path:
    """Write ``n`` random RGB ``size`` px PNGs under ``root/folder`` and the image list ``root/list_name``
    (line i: ``folder/i.png i % classes``); returns the list's path."""
    rng = np.random.default_rng(seed)
    (root / folder).mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / folder / f"{i}.png")
        lines.append(f"{folder}/{i}.png {i % classes}")
    (root / list_name).write_text("\n".join(lines) + "\n")
    return root / list_name
