"""The ``ad_folder`` benchmark: anomaly detection on custom image folders, in FCDD's two layouts.

``root`` holds ``train/<class>/`` and ``test/<class>/`` (class folders with arbitrary names, the same for
train and test):

* **one-vs-rest** (images directly in the class folders): class c is normal; the test images of every
  other class are anomalies;
* **normal/anomalous** (``test/<class>/normal/``, ``test/<class>/anomalous/``, ``train/<class>/normal/``):
  per class a separate test set; optional training anomalies in ``train/<class>/anomalous/`` become the
  benchmark's OE split (``trainer.outliers: {name: oe_images, split: oe}``, ``supervise_mode: other``);
  optional ground-truth masks ``test/<class>/anomalous_gt/<stem>.png`` (or ``<stem>_mask.png``), 1 (any
  nonzero pixel) = anomalous pixel; normal test images have empty masks.

``layout: auto`` picks normal/anomalous when ``test/<normal class>/normal`` exists. Image lists are
written to ``derived_dir`` (default ``<root>/.imglists/normal_<class>``). ID labels are 0, anomalies -1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image

from ..benchmark import Benchmark
from ..imglist import write_imglist_if_changed
from ..registry import BENCHMARKS
from ...errors import ConfigError, DataError

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
LAYOUTS = ("auto", "one_vs_rest", "normal_anomalous")


def _images(folder: Path, root: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(str(p.relative_to(root)) for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)


@BENCHMARKS.register("ad_folder")
class FolderADBenchmark(Benchmark):
    """Custom-folder AD benchmark (see the module doc). ``normal_class``: a class folder name (or its
    index in the sorted class list)."""

    def __init__(self, root: str, normal_class: Any = 0, layout: str = "auto", derived_dir: str | None = None,
                 preprocessor: Mapping[str, Any] | None = None, resize_masks: bool = False,
                 num_classes: int | None = None, title: str | None = None, on_bad_image: str = "error"):
        self.root = Path(root)
        if layout not in LAYOUTS:
            raise ConfigError(f"benchmark.layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
        classes = self.ad_classes({"root": root})
        if isinstance(normal_class, int) and not isinstance(normal_class, bool):
            if not 0 <= normal_class < len(classes):
                raise ConfigError(f"benchmark.normal_class: {normal_class} is not a class index of {self.root} "
                                  f"(classes: {', '.join(classes)})")
            normal_class = classes[normal_class]
        if isinstance(normal_class, (list, tuple)):
            raise ConfigError("benchmark.normal_class: ad_folder takes one normal class (leave_one_out is not "
                              "defined for folder benchmarks)")
        if str(normal_class) not in classes:
            raise ConfigError(f"benchmark.normal_class: no class folder '{normal_class}' under {self.root / 'train'} "
                              f"(classes: {', '.join(classes)})")
        c = self.normal = str(normal_class)
        if layout == "auto":
            layout = "normal_anomalous" if (self.root / "test" / c / "normal").is_dir() else "one_vs_rest"
        self.layout, self.resize_masks = layout, bool(resize_masks)
        out = Path(derived_dir) if derived_dir else self.root / ".imglists" / f"normal_{c}"
        if layout == "one_vs_rest":
            train = _images(self.root / "train" / c, self.root)
            test_normal = _images(self.root / "test" / c, self.root)
            anomalies = [p for o in classes if o != c for p in _images(self.root / "test" / o, self.root)]
            train_anom: list[str] = []
        else:
            train = _images(self.root / "train" / c / "normal", self.root)
            test_normal = _images(self.root / "test" / c / "normal", self.root)
            anomalies = _images(self.root / "test" / c / "anomalous", self.root)
            train_anom = _images(self.root / "train" / c / "anomalous", self.root)
        where = f"benchmark ad_folder ({self.root}, class {c}, layout {layout})"
        if not train:
            raise DataError(f"{where}: no training images")
        if not test_normal:
            raise DataError(f"{where}: no normal test images")
        if not anomalies:
            raise DataError(f"{where}: no test anomalies (an AD benchmark needs anomalous test images)")
        lists = {"train.txt": [(p, 0) for p in train], "test_normal.txt": [(p, 0) for p in test_normal],
                 "test_anomalies.txt": [(p, -1) for p in anomalies]}
        if train_anom:
            lists["train_anomalies.txt"] = [(p, -1) for p in train_anom]
        for name, rows in lists.items():
            write_imglist_if_changed(out / name, rows)
        super().__init__(num_classes=1, id={"train": "train.txt", "val": "train.txt", "test": "test_normal.txt"},
                         ood={"far": {"anomalies": "test_anomalies.txt"}}, imglist_dir=str(out), data_root=str(self.root),
                         preprocessor=preprocessor, title=title or "ad_folder", on_bad_image=on_bad_image,
                         oe="train_anomalies.txt" if train_anom else None)
        self.classes = classes
        self.gt_dir = self.root / "test" / c / "anomalous_gt"

    @staticmethod
    def ad_classes(spec: Mapping[str, Any]) -> list[str]:
        """The class folder names under ``<root>/train`` (sorted)."""
        root = Path(str(spec.get("root", "")))
        if not (root / "train").is_dir():
            raise DataError(f"benchmark.root: {root / 'train'} is not a directory (expected train/<class>/ and test/<class>/)")
        classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise DataError(f"benchmark.root: no class folders under {root / 'train'}")
        return classes

    # ------------------------------------------------------------------ masks
    @property
    def has_masks(self) -> bool:
        return self.layout == "normal_anomalous" and self.gt_dir.is_dir()

    def mask_path(self, image_rel: str) -> Path | None:
        """The ground-truth file of an anomalous test image, or None (normal images / no mask)."""
        stem = Path(image_rel).stem
        for cand in sorted(self.gt_dir.glob(f"{stem}.*")) + sorted(self.gt_dir.glob(f"{stem}_mask.*")):
            if cand.suffix.lower() in SUFFIXES:
                return cand
        return None

    def load_mask(self, image_rel: str, is_anomaly: bool) -> np.ndarray:
        """The mask of a test image at its raw size ([H, W] uint8 in {0, 1}); zeros for normal images.
        DataError naming both files when sizes differ (unless ``resize_masks``), or when an anomaly has none."""
        image_path = self.root / image_rel
        with Image.open(image_path) as img:
            size = img.size
        if not is_anomaly:
            return np.zeros(size[::-1], np.uint8)
        path = self.mask_path(image_rel)
        if path is None:
            raise DataError(f"{image_path}: no ground-truth mask in {self.gt_dir} (expected {Path(image_rel).stem}.png)")
        with Image.open(path) as m:
            m = m.convert("L")
            if m.size != size:
                if not self.resize_masks:
                    raise DataError(f"ground-truth mask {path} is {m.size[0]}x{m.size[1]} but its image {image_path} "
                                    f"is {size[0]}x{size[1]} (set benchmark.resize_masks=true to resize it)")
                m = m.resize(size, Image.NEAREST)
            return (np.asarray(m) > 0).astype(np.uint8)
