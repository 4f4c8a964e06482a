"""Named benchmarks whose data comes from ``openood-ext data prepare``: OpenOOD v1.5's classification
benchmarks (cifar10, cifar100, imagenet200, imagenet) and one-vs-rest anomaly detection (mnist, fmnist,
cifar10_ad).

They are plain image-list benchmarks (``configs/benchmarks/<name>.yml`` says which lists); what the names
add is a one-line error that says how to prepare the data when the ID images are not there, instead of a
missing-file error deep inside a data loader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from ..errors import ConfigError, DataError
from ..utils.io import write_text
from .benchmark import Benchmark, Split
from .imglist import read_imglist
from .registry import BENCHMARKS


class PreparedBenchmark(Benchmark):
    """An image-list benchmark whose images come from ``openood-ext data prepare <name>``."""

    def prepare(self) -> None:
        """Check (cheaply) that the ID splits are there; DataError with the prepare command if not."""
        for split in self.splits(("id_train", "id_val", "id_test")):
            hint = (f"run: openood-ext data prepare {self.name} --root {self.data_root} [--from ARCHIVE ...] "
                    f"(or set benchmark.data_root / OPENOOD_EXT_DATA to an OpenOOD data directory)")
            if not split.imglist.is_file():
                raise DataError(f"benchmark {self.name}: {split.name} image list {split.imglist} not found; {hint}")
            entries = read_imglist(split.imglist)
            root = self.image_root_of(split)
            if entries and not (root / entries[0].path).exists():
                raise DataError(f"benchmark {self.name}: {split.name} images are not under {root} "
                                f"(first: {entries[0].path}); {hint}")


for _name in ("cifar10", "cifar100", "imagenet200", "imagenet"):
    BENCHMARKS.register(_name)(type(f"{_name.capitalize()}Benchmark", (PreparedBenchmark,), {
        "__doc__": f"OpenOOD v1.5's {_name} benchmark (image lists + images from `openood-ext data prepare "
                   f"{_name}` or an OpenOOD data directory)."}))


class OneVsRestBenchmark(PreparedBenchmark):
    """One-vs-rest anomaly detection: the normal class(es) of a labelled set are ID, every other class is
    the far-OOD set ``anomalies``.

    ``id`` names the *full* labelled lists (train/val/test with every class). The derived lists (normal
    samples relabelled 0..k-1 in the order of ``normal_class``; anomalies labelled -1) are written to
    ``<data_root>/benchmark_imglist/<title>/normal_<classes>/`` whenever the full lists exist, so runs
    with different normal classes never share a cache entry. ``class_names`` (on the named benchmarks):
    the name of every label of the full set.

    ``merge_val_into: test | train``: the full set's ``val`` list was cut from its test (or training)
    split; the derived test (or training) lists take it back, so that one-vs-rest tests on the whole
    test split as EOE and FCDD do. OpenOOD's CIFAR-10 lists hold 9,000 test + 1,000 val images, both
    from CIFAR-10's 10,000-image test split (``merge_val_into: test`` restores the 10,000); the
    Fashion-MNIST lists hold 54,000 train + 6,000 val from its 60,000 training images (``train``). The
    derived ``val`` list stays as it is (the AD pipelines do not read it).
    """

    class_names: tuple[str, ...] | None = None

    def __init__(self, normal_class: int | Sequence[int] = 0, id: Mapping[str, Any] | None = None,
                 num_classes: int | None = None, ood: Mapping[str, Any] | None = None,
                 derived_dir: str | None = None, merge_val_into: Literal["test", "train"] | None = None,
                 **kwargs):
        if ood:
            raise ConfigError("one-vs-rest benchmarks derive their OOD set from the test list; remove benchmark.ood")
        normal = [normal_class] if isinstance(normal_class, int) else list(normal_class)
        if not normal or not all(isinstance(c, int) and c >= 0 for c in normal):
            raise ConfigError(f"benchmark.normal_class: expected a class index or a list of them, got {normal_class!r}")
        if num_classes is not None and int(num_classes) <= max(normal):
            raise ConfigError(f"benchmark.normal_class {max(normal)} is not a class of a {num_classes}-class set")
        self.normal = normal
        self.source_classes = num_classes
        self.merge_val_into = merge_val_into
        super().__init__(num_classes=len(normal), id=id or {}, ood=None, **kwargs)
        self.base_splits = {s.name: s for s in self._splits}
        tag = "normal_" + "-".join(str(c) for c in normal) + (f"_val_in_{merge_val_into}" if merge_val_into else "")
        out = Path(derived_dir) if derived_dir else self.data_root / "benchmark_imglist" / self.title / tag
        self.derived_dir = out
        self._splits = [Split("id_train", "id_train", out / "train.txt", self.base_splits["id_train"].image_root),
                        Split("id_val", "id_val", out / "val.txt", self.base_splits["id_val"].image_root),
                        Split("id_test", "id_test", out / "test_normal.txt", self.base_splits["id_test"].image_root),
                        Split("anomalies", "far", out / "test_anomalies.txt", self.base_splits["id_test"].image_root)]
        self._derive()

    def source_list(self, split: Split) -> Path:
        """The full image list a derived split is cut from."""
        return self.base_splits["id_test" if split.name == "anomalies" else split.name].imglist

    def _derive(self) -> None:
        if not all(s.imglist.is_file() for s in self.base_splits.values()):
            return  # status/prepare report the base lists as absent
        remap = {c: i for i, c in enumerate(self.normal)}
        full = {base: read_imglist(self.base_splits[base].imglist) for base in ("id_train", "id_val", "id_test")}
        if self.merge_val_into:
            full[f"id_{self.merge_val_into}"] = full[f"id_{self.merge_val_into}"] + full["id_val"]
        texts = {}
        for base, split in zip(("id_train", "id_val", "id_test"), self._splits[:3]):
            texts[split.imglist] = "".join(f"{e.path} {remap[e.label]}\n" for e in full[base] if e.label in remap)
        texts[self._splits[3].imglist] = "".join(f"{e.path} -1\n" for e in full["id_test"] if e.label not in remap)
        for path, text in texts.items():
            if not text:
                raise DataError(f"benchmark {self.name}: normal class(es) {self.normal} leave {path.name} empty "
                                f"(labels in the lists are 0..{(self.source_classes or 1) - 1})")
            if not (path.is_file() and path.read_text() == text):
                try:
                    write_text(path, text)
                except Exception as exc:
                    raise DataError(f"{path}: cannot write the one-vs-rest image list ({exc}); set "
                                    f"benchmark.derived_dir to a writable directory") from None


#: Class names by label (EOE's ``str_labels``, used verbatim in CLIP prompts, underscores included).
CLASS_NAMES = {
    "mnist": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    "fmnist": ("top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"),
    "cifar10_ad": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}

for _name in ("mnist", "fmnist", "cifar10_ad"):
    BENCHMARKS.register(_name)(type(f"{_name.capitalize()}OneVsRest", (OneVsRestBenchmark,), {
        "__doc__": f"One-vs-rest anomaly detection on {_name} (normal_class is ID, the other classes anomalies).",
        "class_names": CLASS_NAMES[_name]}))

#: CIFAR-100's 20 superclasses (coarse labels 0..19, in label order) and their 5 fine classes each
CIFAR100_SUPERCLASSES = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
#: CIFAR-100's fine class names by fine label (the dataset orders them alphabetically)
CIFAR100_FINE = tuple(sorted(n for group in CIFAR100_SUPERCLASSES.values() for n in group))


def cifar100_coarse_of_fine() -> list[int]:
    """The superclass (coarse label) of every fine label 0..99."""
    coarse = {n: i for i, group in enumerate(CIFAR100_SUPERCLASSES.values()) for n in group}
    return [coarse[n] for n in CIFAR100_FINE]


@BENCHMARKS.register("cifar100_ad")
class Cifar100OneVsRest(OneVsRestBenchmark):
    """One-vs-rest anomaly detection on CIFAR-100 over its 20 superclasses (``groups: superclass``, the
    usual CIFAR-100 AD benchmark: a normal class is the 5 fine classes of one superclass, the other 95 are
    the anomalies) or its 100 fine classes (``groups: fine``: what EOE's code iterates with
    ``--dataset cifar100``; it has no superclass mapping). ``normal_class`` counts in the chosen groups;
    the image lists carry fine labels (OpenOOD's cifar100 lists from ``openood-ext data prepare cifar100``),
    and ``class_names`` names every fine label.
    """

    class_names = CIFAR100_FINE

    def __init__(self, normal_class: int | Sequence[int] = 0, groups: Literal["superclass", "fine"] = "superclass",
                 **kwargs):
        normal = [normal_class] if isinstance(normal_class, int) else list(normal_class)
        self.groups = groups
        if groups == "superclass":
            if not all(isinstance(c, int) and 0 <= c < len(CIFAR100_SUPERCLASSES) for c in normal):
                raise ConfigError(f"benchmark.normal_class: expected superclass indices 0..19 "
                                  f"(groups: superclass), got {normal_class!r}")
            coarse = cifar100_coarse_of_fine()
            normal = [f for c in normal for f in range(len(coarse)) if coarse[f] == c]
        super().__init__(normal_class=normal, **kwargs)

    @staticmethod
    def ad_classes(spec: Mapping[str, Any]) -> list[int]:
        """0..19 (superclasses) or 0..99 (fine classes), known without the data."""
        return list(range(len(CIFAR100_SUPERCLASSES) if spec.get("groups", "superclass") == "superclass"
                          else len(CIFAR100_FINE)))


__all__ = ["PreparedBenchmark", "OneVsRestBenchmark", "Cifar100OneVsRest", "CIFAR100_SUPERCLASSES"]
