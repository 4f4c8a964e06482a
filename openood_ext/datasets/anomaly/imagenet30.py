"""The ``imagenet30`` benchmark: ImageNet-30 one-vs-rest (Hendrycks et al., 2019; EOE's and FCDD's
ImageNet AD benchmark), read from its extracted archives.

ImageNet-30 is not downloadable here. Get the training and test archives linked from
https://github.com/hendrycks/ss-ood (ImageNet-30: ``one_class_train``, ``one_class_test``), extract both
into ``benchmark.root`` so that it holds ``one_class_train/<class>/...`` and ``one_class_test/<class>/...``
(images anywhere below a class folder). EOE's own copy (``imagenet_ad/train`` and ``imagenet_ad/val``)
works with ``train_dir: train, test_dir: val``. The 30 class folder names are :data:`IMAGENET30_CLASSES`
(EOE's ``ADImageNet.ad_classes``, in that order, so ``normal_class: 0`` is acorn).

Normal class c: training images = ``<train_dir>/c``; test = ``<test_dir>/c`` (normal) + every other
class's test images (anomalies). Image lists go to ``derived_dir`` (default ``<root>/.imglists/normal_<c>``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..benchmark import Benchmark, named_class
from ..imglist import write_imglist_if_changed
from ..registry import BENCHMARKS
from ...errors import ConfigError, DataError

IMAGENET30_CLASSES = (
    "acorn", "airliner", "ambulance", "american_alligator", "banjo", "barn", "bikini", "digital_clock",
    "dragonfly", "dumbbell", "forklift", "goblet", "grand_piano", "hotdog", "hourglass", "manhole_cover",
    "mosque", "nail", "parking_meter", "pillow", "revolver", "rotary_dial_telephone", "schooner", "snowmobile",
    "soccer_ball", "stingray", "strawberry", "tank", "toaster", "volcano")
WHERE = ("get the ImageNet-30 train/test archives linked from https://github.com/hendrycks/ss-ood "
         "(one_class_train, one_class_test; not downloadable automatically), extract both into benchmark.root")
SUFFIXES = {".jpeg", ".jpg", ".png"}


def _images(folder: Path, root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)


@BENCHMARKS.register("imagenet30")
class ImageNet30Benchmark(Benchmark):
    """ImageNet-30, one normal class (see the module doc)."""

    def __init__(self, root: str = "data/imagenet30", normal_class: Any = 0, train_dir: str = "one_class_train",
                 test_dir: str = "one_class_test", derived_dir: str | None = None,
                 preprocessor: Mapping[str, Any] | None = None, num_classes: int | None = None,
                 title: str | None = None, on_bad_image: str = "error"):
        if isinstance(normal_class, (list, tuple)):
            raise ConfigError("benchmark.normal_class: imagenet30 takes one normal class (use ad.protocol: one_vs_rest)")
        self.root, self.normal = Path(root), named_class(normal_class, IMAGENET30_CLASSES, "ImageNet-30")
        train_root, test_root = self.root / train_dir, self.root / test_dir
        for folder in (train_root / self.normal, test_root / self.normal):
            if not folder.is_dir():
                raise DataError(f"benchmark imagenet30: {folder} not found; {WHERE}")
        train = _images(train_root / self.normal, self.root)
        test_normal = _images(test_root / self.normal, self.root)
        anomalies = [p for c in IMAGENET30_CLASSES if c != self.normal for p in _images(test_root / c, self.root)]
        for name, rows in (("training", train), ("normal test", test_normal), ("anomalous test", anomalies)):
            if not rows:
                raise DataError(f"benchmark imagenet30 ({self.root}, class {self.normal}): no {name} images; {WHERE}")
        out = Path(derived_dir) if derived_dir else self.root / ".imglists" / f"normal_{self.normal}"
        lists = {"train.txt": [(p, 0) for p in train], "test_normal.txt": [(p, 0) for p in test_normal],
                 "test_anomalies.txt": [(p, -1) for p in anomalies]}
        for name, rows in lists.items():
            write_imglist_if_changed(out / name, rows)
        super().__init__(num_classes=1, id={"train": "train.txt", "val": "train.txt", "test": "test_normal.txt"},
                         ood={"far": {"anomalies": "test_anomalies.txt"}}, imglist_dir=str(out),
                         data_root=str(self.root), preprocessor=preprocessor, title=title or "imagenet30",
                         on_bad_image=on_bad_image)
        self.classes = list(IMAGENET30_CLASSES)

    @staticmethod
    def ad_classes(spec: Mapping[str, Any]) -> list[str]:
        """The 30 class names (known without the data, so a missing archive fails with one line later)."""
        return list(IMAGENET30_CLASSES)
