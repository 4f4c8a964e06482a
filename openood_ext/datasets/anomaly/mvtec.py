"""The ``mvtec`` benchmark: MVTec-AD (Bergmann et al., CVPR 2019) read from its extracted archive.

MVTec-AD cannot be downloaded here (its licence requires a form). Get ``mvtec_anomaly_detection.tar.xz``
from https://www.mvtec.com/company/research/datasets/mvtec-ad and run ``openood-ext data prepare mvtec --from
ARCHIVE`` (:mod:`openood_ext.datasets.prepare.mvtec`: extracts into ``data/mvtec_anomaly_detection``, checks the
masks, writes the lists below), or extract it yourself and set ``benchmark.root: DIR`` (the directory holding
``bottle/``, ``cable/``, ...). Layout used::

    <root>/<class>/train/good/*.png                   normal training images
    <root>/<class>/test/good/*.png                    normal test images
    <root>/<class>/test/<defect>/*.png                anomalous test images
    <root>/<class>/ground_truth/<defect>/<stem>_mask.png

One benchmark per normal class (``normal_class``: one of :data:`MVTEC_CLASSES` or its index); anomalies
are that class's defective test images; masks feed the ``pixel`` evaluator. As FCDD, training anomalies
for the semi-supervised recipe are not removed from the test set (``oe_defects: N`` lists N images per
defect type as the benchmark's OE split, FCDD's ``mvtec_gt`` with ``--oe-limit N``; seeded).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..benchmark import Benchmark, named_class
from ..imglist import write_imglist_if_changed
from ..registry import BENCHMARKS
from ...errors import DataError

MVTEC_CLASSES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill",
                 "screw", "tile", "toothbrush", "transistor", "wood", "zipper")
WHERE = ("get mvtec_anomaly_detection.tar.xz from https://www.mvtec.com/company/research/datasets/mvtec-ad "
         "(not downloadable automatically) and run openood-ext data prepare mvtec --from it (or extract it and "
         "set benchmark.root to the extracted directory)")


def _pngs(folder: Path, root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in folder.glob("*.png")) if folder.is_dir() else []


def present_classes(root: str | Path) -> list[str]:
    """The MVTec-AD classes with a ``<root>/<class>/train/good`` folder, in :data:`MVTEC_CLASSES` order."""
    root = Path(root)
    return [c for c in MVTEC_CLASSES if (root / c / "train" / "good").is_dir()]


def mask_path(root: Path, image_rel: str) -> Path:
    """Ground-truth mask of the test image ``<class>/test/<defect>/<stem>.png``:
    ``<root>/<class>/ground_truth/<defect>/<stem>_mask.png``."""
    rel = Path(image_rel)
    return Path(root) / rel.parts[0] / "ground_truth" / rel.parts[-2] / f"{rel.stem}_mask.png"


def class_lists(root: str | Path, cls: str) -> tuple[dict[str, list[tuple[str, int]]], list[str]]:
    """({list file: rows}, defect types) of normal class ``cls``: ``train.txt`` (train/good),
    ``test_normal.txt`` (test/good), ``test_anomalies.txt`` (every test/<defect>, label -1).
    Paths are relative to ``root``. DataError when a part is empty."""
    root = Path(root)
    base = root / cls
    if not (base / "train" / "good").is_dir():
        raise DataError(f"benchmark mvtec: {base / 'train' / 'good'} not found; {WHERE}")
    train = _pngs(base / "train" / "good", root)
    test_normal = _pngs(base / "test" / "good", root)
    test_dir = base / "test"
    defects = sorted(p.name for p in test_dir.iterdir() if p.is_dir() and p.name != "good") if test_dir.is_dir() else []
    anomalies = [p for d in defects for p in _pngs(test_dir / d, root)]
    if not train or not test_normal or not anomalies:
        raise DataError(f"benchmark mvtec: class {cls} under {root} lacks training images, normal "
                        f"test images or test anomalies; {WHERE}")
    return {"train.txt": [(p, 0) for p in train], "test_normal.txt": [(p, 0) for p in test_normal],
            "test_anomalies.txt": [(p, -1) for p in anomalies]}, defects


def check_masks(root: str | Path, anomalies: list[str]) -> int:
    """Every anomalous test image has its mask, of its size (read from the PNG headers only); returns the
    number of masks checked. DataError naming both files otherwise."""
    root = Path(root)
    for rel in anomalies:
        image, mask = root / rel, mask_path(root, rel)
        if not mask.is_file():
            raise DataError(f"{image}: ground-truth mask {mask} not found")
        with Image.open(image) as a, Image.open(mask) as m:
            if a.size != m.size:
                raise DataError(f"ground-truth mask {mask} is {m.size[0]}x{m.size[1]} but its image {image} "
                                f"is {a.size[0]}x{a.size[1]}")
    return len(anomalies)


def default_list_dir(root: str | Path, cls: str) -> Path:
    """Where the benchmark (and ``data prepare mvtec``) write class ``cls``'s lists without ``derived_dir``."""
    return Path(root) / ".imglists" / f"normal_{cls}"


@BENCHMARKS.register("mvtec")
class MVTecBenchmark(Benchmark):
    """MVTec-AD, one normal class (see the module doc)."""

    def __init__(self, root: str = "data/mvtec_anomaly_detection", normal_class: Any = 0,
                 derived_dir: str | None = None, preprocessor: Mapping[str, Any] | None = None,
                 oe_defects: int | None = None, seed: int = 0, num_classes: int | None = None,
                 title: str | None = None, on_bad_image: str = "error"):
        self.root, self.normal = Path(root), named_class(normal_class, MVTEC_CLASSES, "MVTec-AD")
        base = self.root / self.normal
        lists, defects = class_lists(self.root, self.normal)
        out = Path(derived_dir) if derived_dir else default_list_dir(self.root, self.normal)
        if oe_defects:
            rng = np.random.default_rng([seed, 0x3D])
            picked = []
            for d in defects:
                files = _pngs(base / "test" / d, self.root)
                picked += [files[i] for i in sorted(rng.choice(len(files), min(oe_defects, len(files)), replace=False))]
            lists["train_anomalies.txt"] = [(p, -1) for p in picked]
        for name, rows in lists.items():
            write_imglist_if_changed(out / name, rows)
        pre = dict(preprocessor or {"image_size": 224, "resize": 224, "channels": 3,
                                    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
        super().__init__(num_classes=1, id={"train": "train.txt", "val": "train.txt", "test": "test_normal.txt"},
                         ood={"far": {"anomalies": "test_anomalies.txt"}}, imglist_dir=str(out), data_root=str(self.root),
                         preprocessor=pre, title=title or "mvtec", on_bad_image=on_bad_image,
                         oe="train_anomalies.txt" if oe_defects else None)
        self.defects = defects

    @staticmethod
    def ad_classes(spec: Mapping[str, Any]) -> list[str]:
        """``ad.classes: all``: the classes present under ``root`` (a subset, e.g. per-class archives, or a
        synthetic set), else all 15 (the benchmark then names what is missing)."""
        return present_classes(spec.get("root", "")) or list(MVTEC_CLASSES)

    has_masks = True

    def load_mask(self, image_rel: str, is_anomaly: bool) -> np.ndarray:
        """[H, W] uint8 in {0, 1} at the image's raw size; zeros for ``good`` images. DataError naming both
        files when a mask is missing or its size differs from its image."""
        image_path = self.root / image_rel
        with Image.open(image_path) as img:
            size = img.size
        if not is_anomaly:
            return np.zeros(size[::-1], np.uint8)
        path = mask_path(self.root, image_rel)
        if not path.is_file():
            raise DataError(f"{image_path}: ground-truth mask {path} not found")
        with Image.open(path) as m:
            if m.size != size:
                raise DataError(f"ground-truth mask {path} is {m.size[0]}x{m.size[1]} but its image {image_path} "
                                f"is {size[0]}x{size[1]}")
            return (np.asarray(m.convert("L")) > 0).astype(np.uint8)
