"""The candidate pool of an OE-image search: image files, their pixels in [0, 1] for EOE's distance, and the
one-image outlier list a fitness evaluation trains with."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..datasets.imglist import ImglistDataset
from ..datasets.transforms import build_transform, image_mode
from ..errors import ConfigError, DataError
from ..synthesizers.oe_images import FolderDataset
from ..synthesizers.pixels import PixelSpace
from ..utils.io import write_text


class ImagePool:
    """``oe_search.candidates``: ``{folder: DIR}`` (every image below it, sorted) or ``{imglist: FILE,
    image_dir: DIR}`` (an OpenOOD list, paths relative to ``image_dir``). Images are read with the benchmark's
    test transform (resize + centre crop, no augmentation); :meth:`pixels` gives them in [0, 1], flattened,
    cached as uint8 (a 32x32 RGB image costs 3 KB)."""

    def __init__(self, spec: Mapping[str, Any], preprocessor: Mapping[str, Any], on_bad_image: str = "error"):
        spec = dict(spec or {})
        unknown = sorted(set(spec) - {"folder", "imglist", "image_dir"})
        if unknown or not (spec.get("folder") or spec.get("imglist")):
            raise ConfigError(f"oe_search.candidates: expected {{folder: DIR}} or {{imglist: FILE, image_dir: DIR}}, "
                              f"got {spec!r}")
        tf, mode = build_transform(preprocessor, train=False), image_mode(preprocessor)
        if spec.get("imglist"):
            listing = Path(spec["imglist"])
            if not listing.is_file():
                raise DataError(f"oe_search.candidates.imglist: {listing} not found")
            root = Path(spec.get("image_dir") or listing.parent)
            self.dataset = ImglistDataset(listing, root, tf, mode, on_bad_image, -1)
        else:
            root = Path(spec["folder"])
            if not root.is_dir():
                raise DataError(f"oe_search.candidates.folder: {root} is not a directory")
            self.dataset = FolderDataset(root, tf, mode, on_bad_image)
        if len(self.dataset) == 0:
            raise DataError(f"oe_search.candidates: no images in {root}")
        self.root = Path(root).resolve()
        self.names = [e.path for e in self.dataset.entries]
        self.space = PixelSpace(preprocessor)
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.names)

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` in [0, 1], [C, H, W]."""
        item = self.dataset[int(i)]
        if item is None:
            raise DataError(f"oe_search.candidates: cannot read {self.root / self.names[int(i)]}")
        return self.space.to_unit(item[0][None])[0].clamp(0, 1)

    def pixels(self, indices) -> np.ndarray:
        """[len(indices), C*H*W] float32 pixel values in [0, 1]."""
        rows = []
        for i in map(int, indices):
            if i not in self._cache:
                self._cache[i] = np.round(self.image(i).flatten().numpy() * 255).astype(np.uint8)
            rows.append(self._cache[i])
        return np.stack(rows).astype(np.float32) / 255.0

    def distance(self, image: int, candidates: np.ndarray) -> np.ndarray:
        """Squared L2 distances between image ``image`` and ``candidates`` (EOE's d; 100 ~ near-duplicate at 3x32x32)."""
        x = self.pixels([image])[0]
        return ((self.pixels(candidates) - x) ** 2).sum(1)

    def fingerprint(self) -> str:
        """A hash of the pool's image names (in order): a resumed search must use the same pool."""
        import hashlib
        return hashlib.sha1("\n".join(self.names).encode()).hexdigest()[:16]

    def write_list(self, image: int, path: Path) -> Path:
        """A one-line OpenOOD image list holding image ``image`` (the OE set of a fitness evaluation)."""
        write_text(path, f"{self.names[int(image)]} -1\n")
        return path
