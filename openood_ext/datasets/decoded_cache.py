"""Decode an image list of small images once into one uint8 array ``[N, C, H, W]`` on disk, then load it whole.

The stored pixels are the output of the per-image path's deterministic PIL steps (open, convert to the
benchmark's mode, ``Resize(resize)``, ``CenterCrop(image_size)``: :func:`.tensor_recipe.geometry`), made by
the same PIL code, so ``pixels / 255`` equals ``ToTensor()`` of the PIL path exactly.

On disk (``<cache dir>/<name>.npy`` plus ``<name>.json``), both written atomically (:mod:`..utils.io`):
``name`` is a hash of the list's path, image root and geometry; the sidecar holds the *content key*: a
hash of the list's bytes, each image file's size and mtime, and the geometry, with the array's shape
and the list and image root it came from; its mtime is the cache's last use (set on every read), which
``openood-ext cache list|clean`` (:mod:`.cache_cli`) reports and cleans by. A
sidecar whose key differs (a changed list, an image replaced after caching) or an array whose shape or
size disagrees with it (a truncated file) is stale: logged, rebuilt. A failed write (disk full) removes
the partial file, logs one line and the run goes on with the decoded array in memory.

Bad input is reported exactly as the per-image path reports it, before any training: a missing or
unreadable image names the file and its list line; a label outside the classes names the list line
(:class:`.imglist.ImglistDataset`). The list must hold *small* images: an image with a side larger than
``max_side``, or a recipe resizing to more than it, stops the decoding with :class:`NotSmall` naming it
(the caller keeps the PIL path). Images of mixed sizes are fine: the recipe's resize and centre crop
bring them to one size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision import transforms as T

from ..errors import ConfigError, OpenOODError
from ..utils.io import write_stream, write_text
from .imglist import ImglistDataset

FORMAT = 1


class NotSmall(Exception):
    """The list holds an image larger than ``max_side``: not worth caching decoded (message names it)."""


@dataclass
class DecodedImages:
    """A decoded image list: ``images`` uint8 [N, C, H, W]; ``labels`` long [N]; ``skipped`` bad images
    dropped under ``on_bad_image: skip``; ``source``: 'cache' (read from disk), 'decoded' or 'memory';
    ``kept`` long [N]: each row's 0-based index in the image list (None where a caller built the set itself)."""

    images: torch.Tensor
    labels: torch.Tensor
    skipped: int = 0
    source: str = "decoded"
    kept: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)


def check_cache_dir(path: str | os.PathLike, key: str = "data.cache_dir") -> Path:
    """``path`` as a usable cache directory; ConfigError (one line) when it is a file or not writable."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"{key} {path}: {p} is a file, expected a directory")
            if not os.access(p, os.W_OK | os.X_OK):
                raise ConfigError(f"{key} {path}: {p} is not writable (give another directory or data.cache: false)")
            break
    return path


def _touch(sidecar: Path) -> None:
    """Mark a cache as used now (its sidecar's mtime: what ``openood-ext cache clean --older-than`` reads)."""
    try:
        os.utime(sidecar)
    except OSError:  # a read-only cache directory is still a usable cache
        pass


def _hash(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()


def content_key(dataset: ImglistDataset, geometry: dict) -> str:
    """Hash of the list's bytes, every image file's size and mtime, and the fixed pre-resize."""
    h = hashlib.sha256(Path(dataset.imglist).read_bytes() if Path(dataset.imglist).is_file() else b"")
    h.update(json.dumps({**geometry, "format": FORMAT, "root": str(Path(dataset.data_root).resolve())},
                        sort_keys=True).encode())
    for e in dataset.entries:
        try:
            st = os.stat(dataset.data_root / e.path)
            h.update(f"{e.path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{e.path}\0missing\n".encode())
    return h.hexdigest()


def _pil_steps(geometry: dict):
    interp = T.InterpolationMode(geometry["interpolation"])
    return T.Compose([T.Resize(geometry["resize"], interpolation=interp), T.CenterCrop(geometry["image_size"])])


def decode(dataset: ImglistDataset, geometry: dict, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N, C, H, W] pixels, kept list indices); DataError as the PIL path for a bad image."""
    steps = _pil_steps(geometry)
    size, channels = geometry["image_size"], 3 if geometry["mode"] == "RGB" else 1
    out = np.empty((len(dataset), channels, size, size), dtype=np.uint8)
    kept = []
    for i, entry in enumerate(dataset.entries):
        img = dataset.image_or_skip(entry)
        if img is None:
            continue
        if max(img.size) > max_side:
            raise NotSmall(f"{dataset.data_root / entry.path} is {img.size[0]}x{img.size[1]} "
                           f"(listed at {dataset.imglist}:{entry.line}), larger than data.max_side {max_side}")
        arr = np.asarray(steps(img), dtype=np.uint8)
        out[len(kept)] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        kept.append(i)
    return out[:len(kept)], np.asarray(kept, dtype=np.int64)


class DecodedCache:
    """Decoded image lists under ``root`` (None: decode into memory only, nothing written)."""

    def __init__(self, root: str | os.PathLike | None, max_side: int = 64, log: logging.Logger | None = None):
        self.root = Path(root) if root is not None else None
        self.max_side = int(max_side)
        self.log = log or logging.getLogger("openood_ext")

    def paths(self, dataset: ImglistDataset, geometry: dict) -> tuple[Path, Path]:
        name = _hash(str(Path(dataset.imglist).resolve()), str(Path(dataset.data_root).resolve()),
                     json.dumps(geometry, sort_keys=True))[:20]
        return self.root / f"{name}.npy", self.root / f"{name}.json"

    def _read(self, array: Path, sidecar: Path, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The stored (pixels, kept) when present and current; None (with a log line when stale)."""
        if not sidecar.is_file() and not array.is_file():
            return None
        try:
            meta = json.loads(sidecar.read_text())
            if meta.get("key") != key:
                self.log.info("decoded-image cache %s is stale (image list or images changed); rebuilding", array)
                return None
            pixels = np.load(array, mmap_mode="r")
            if list(pixels.shape) != meta["shape"] or pixels.dtype != np.uint8:
                raise ValueError(f"shape {list(pixels.shape)} != {meta['shape']}")
            out = np.array(pixels), np.asarray(meta["kept"], dtype=np.int64)
            _touch(sidecar)
            return out
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.log.info("decoded-image cache %s is unreadable or truncated (%s); rebuilding", array,
                          str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return None

    def _write(self, array: Path, sidecar: Path, key: str, pixels: np.ndarray, kept: np.ndarray,
               dataset: ImglistDataset) -> bool:
        try:
            write_stream(array, lambda fh: np.save(fh, pixels))
            write_text(sidecar, json.dumps({"key": key, "shape": list(pixels.shape), "kept": kept.tolist(),
                                            "format": FORMAT, "imglist": str(Path(dataset.imglist).resolve()),
                                            "data_root": str(Path(dataset.data_root).resolve())}) + "\n")
            return True
        except OpenOODError as exc:  # disk full, permissions: the partial file is already gone
            for p in (array, sidecar):
                p.unlink(missing_ok=True)
            self.log.warning("decoded-image cache not written (%s); training from the images decoded in memory", exc)
            return False

    def load(self, dataset: ImglistDataset, geometry: dict) -> DecodedImages:
        """The list's decoded pixels (from disk when current, else decoded and stored); NotSmall or
        DataError as described in the module docstring."""
        if max(geometry["resize"], geometry["image_size"]) > self.max_side:
            raise NotSmall(f"{dataset.imglist}: images are resized to {geometry['resize']} px, larger than "
                           f"data.max_side {self.max_side}")
        labels = dataset.labels()
        key = content_key(dataset, geometry) if self.root is not None else None
        if self.root is not None:
            array, sidecar = self.paths(dataset, geometry)
            hit = self._read(array, sidecar, key)
            if hit is not None:
                pixels, kept = hit
                kept = torch.from_numpy(kept)
                return DecodedImages(torch.from_numpy(pixels), labels[kept], len(labels) - len(kept), "cache", kept)
        pixels, kept = decode(dataset, geometry, self.max_side)
        source = "memory"
        if self.root is not None and self._write(array, sidecar, key, pixels, kept, dataset):
            source = "decoded"
            self.log.info("decoded %d images of %s into %s (%.1f MiB)", len(kept), dataset.imglist, array,
                          pixels.nbytes / 2**20)
        kept = torch.from_numpy(kept)
        return DecodedImages(torch.from_numpy(pixels), labels[kept], len(labels) - len(kept), source, kept)
