"""Image-list definitions: which images of which sets form each benchmark's splits (sorted paths, seeded
hold-outs), written as OpenOOD-format lists under ``<root>/benchmark_imglist/<benchmark>/``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ...errors import DataError
from ...utils.io import write_json, write_text
from .archives import CIFAR10_CLASSES, HOLDOUT_SEED, IMAGE_DIR, check_class_counts, images_under


def class_tree(images_root: Path, rel: str, classes: Iterable[str] | None = None) -> list[tuple[str, int]] | None:
    """``(relative path, class index)`` of every image in ``images_root/rel/<class>/``; None when absent.

    ``classes`` fixes the label order (a missing class folder is an error, never a silent shift);
    without it the sorted folder names are the classes.
    """
    base = images_root / rel
    if not base.is_dir():
        return None
    folders = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    names = list(classes) if classes is not None else folders
    missing = [c for c in names if c not in folders]
    if classes is not None and missing and len(missing) < len(names):
        raise DataError(f"{base}: class folder(s) {missing} missing (expected {len(names)} classes)")
    if missing:
        return None
    entries = []
    for label, cls in enumerate(names):
        entries += [(p.relative_to(images_root).as_posix(), label) for p in images_under(base / cls)]
    return entries or None


def holdout(entries: list[tuple[str, int]], per_class: int | None = None, fraction: float | None = None,
            seed: int = HOLDOUT_SEED) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(held out, rest): ``per_class`` (or ``fraction`` of each class) entries drawn with a seeded RNG."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[tuple[str, int]]] = {}
    for e in entries:
        by_class.setdefault(e[1], []).append(e)
    held, rest = [], []
    for label in sorted(by_class):
        items = sorted(by_class[label])
        n = per_class if per_class is not None else int(round(fraction * len(items)))
        n = min(n, len(items))
        chosen = set(rng.choice(len(items), size=n, replace=False).tolist()) if n else set()
        for i, e in enumerate(items):
            (held if i in chosen else rest).append(e)
    return held, rest


def all_images(images_root: Path, rel: str) -> list[tuple[str, int]] | None:
    """Every image under ``images_root/rel`` as an OOD entry (label -1); None when there are none."""
    found = images_under(images_root / rel)
    return [(p.relative_to(images_root).as_posix(), -1) for p in found] or None


def as_ood(entries):
    return None if entries is None else [(p, -1) for p, _ in entries]


@dataclass(frozen=True)
class ListSpec:
    """One image list of a benchmark: how to build it from prepared images, and what it needs.

    ``build(images_root)`` returns entries, or None when its images are not there. ``build=None``: only
    OpenOOD's own list defines this set (e.g. its filtered Tiny-ImageNet); it comes from an OpenOOD data
    directory. ``required``: the benchmark cannot run without it (ID splits).
    """

    fname: str
    sets: tuple[str, ...]
    build: Callable[[Path], list[tuple[str, int]] | None] | None
    required: bool = False
    parts: tuple[str, ...] = ()  # sub-directories of the set the list reads (train/test)


def _checked_tree(root: Path, rel: str, classes):
    entries = class_tree(root, rel, classes)
    check_class_counts(rel, entries)
    return entries


def _cifar_id(set_name: str, classes, per_class_val: int):
    def train(root):
        return _checked_tree(root, f"{set_name}/train", classes)

    def val(root):
        entries = _checked_tree(root, f"{set_name}/test", classes)
        return None if entries is None else holdout(entries, per_class=per_class_val)[0]

    def test(root):
        entries = _checked_tree(root, f"{set_name}/test", classes)
        return None if entries is None else holdout(entries, per_class=per_class_val)[1]
    return train, val, test


_c10_train, _c10_val, _c10_test = _cifar_id("cifar10", CIFAR10_CLASSES, 100)
_c100_train, _c100_val, _c100_test = _cifar_id("cifar100", None, 10)


def _ood_sets() -> list[ListSpec]:
    """The far-OOD lists shared by CIFAR-10 and CIFAR-100 (OpenOOD v1.5)."""
    return [
        ListSpec("test_mnist.txt", ("mnist",), lambda r: all_images(r, "mnist")),
        ListSpec("test_svhn.txt", ("svhn",), lambda r: all_images(r, "svhn/test")),
        ListSpec("test_texture.txt", ("texture",), lambda r: all_images(r, "texture")),
        ListSpec("test_places365.txt", ("places365",), None),
        ListSpec("val_tin.txt", ("tin",), None),
        ListSpec("test_tin.txt", ("tin",), None),
    ]


def _ad_lists(set_name: str) -> list[ListSpec]:
    """Base lists of a one-vs-rest benchmark: train (90 %), val (10 % of train, per class), test."""
    def train(root):
        e = class_tree(root, f"{set_name}/train")
        return None if e is None else holdout(e, fraction=0.1)[1]

    def val(root):
        e = class_tree(root, f"{set_name}/train")
        return None if e is None else holdout(e, fraction=0.1)[0]

    return [ListSpec(f"train_{set_name}.txt", (set_name,), train, True, ("train",)),
            ListSpec(f"val_{set_name}.txt", (set_name,), val, True, ("train",)),
            ListSpec(f"test_{set_name}.txt", (set_name,), lambda r: class_tree(r, f"{set_name}/test"), True,
                     ("test",))]


def _openood_only(names: Iterable[tuple[str, str]]) -> list[ListSpec]:
    return [ListSpec(fname, (set_name,), None) for fname, set_name in names]


BENCHMARK_LISTS: dict[str, list[ListSpec]] = {
    "cifar10": [
        ListSpec("train_cifar10.txt", ("cifar10",), _c10_train, True, ("train",)),
        ListSpec("val_cifar10.txt", ("cifar10",), _c10_val, True, ("test",)),
        ListSpec("test_cifar10.txt", ("cifar10",), _c10_test, True, ("test",)),
        # OpenOOD holds CIFAR-100's validation images out of this near-OOD set: 9,000 of 10,000.
        ListSpec("test_cifar100.txt", ("cifar100",), lambda r: as_ood(_c100_test(r))),
        *_ood_sets(),
        *_openood_only([("test_cifar10c.txt", "cifar10c")]),  # covariate-shifted ID (fsood)
    ],
    "cifar100": [
        ListSpec("train_cifar100.txt", ("cifar100",), _c100_train, True, ("train",)),
        ListSpec("val_cifar100.txt", ("cifar100",), _c100_val, True, ("test",)),
        ListSpec("test_cifar100.txt", ("cifar100",), _c100_test, True, ("test",)),
        ListSpec("test_cifar10.txt", ("cifar10",), lambda r: all_images(r, "cifar10/test")),
        *_ood_sets(),
        *_openood_only([("test_cifar100c.txt", "cifar100c")]),  # covariate-shifted ID (fsood)
    ],
    "imagenet200": [
        *_openood_only([("train_imagenet200.txt", "imagenet_1k"), ("val_imagenet200.txt", "imagenet_1k"),
                        ("test_imagenet200.txt", "imagenet_1k"), ("val_openimage_o.txt", "openimage_o"),
                        ("test_ssb_hard.txt", "ssb_hard"), ("test_ninco.txt", "ninco"),
                        ("test_inaturalist.txt", "inaturalist"), ("test_openimage_o.txt", "openimage_o"),
                        # covariate-shifted ID (fsood)
                        ("test_imagenet200_v2.txt", "imagenet_v2"), ("test_imagenet200_c.txt", "imagenet_c"),
                        ("test_imagenet200_r.txt", "imagenet_r")]),
        ListSpec("test_textures.txt", ("texture",), lambda r: all_images(r, "texture")),
    ],
    "imagenet": [
        *_openood_only([("train_imagenet.txt", "imagenet_1k"), ("val_imagenet.txt", "imagenet_1k"),
                        ("test_imagenet.txt", "imagenet_1k"), ("val_openimage_o.txt", "openimage_o"),
                        ("test_ssb_hard.txt", "ssb_hard"), ("test_ninco.txt", "ninco"),
                        ("test_inaturalist.txt", "inaturalist"), ("test_openimage_o.txt", "openimage_o"),
                        # covariate-shifted ID (fsood)
                        ("test_imagenet_v2.txt", "imagenet_v2"), ("test_imagenet_c.txt", "imagenet_c"),
                        ("test_imagenet_r.txt", "imagenet_r")]),
        ListSpec("test_textures.txt", ("texture",), lambda r: all_images(r, "texture")),
    ],
    "mnist": _ad_lists("mnist"),
    "fmnist": _ad_lists("fashionmnist"),
    # one-vs-rest on CIFAR-10 reads the cifar10 benchmark's ID lists (configs/benchmarks/cifar10_ad.yml)
    "cifar10_ad": [
        ListSpec("train_cifar10.txt", ("cifar10",), _c10_train, True, ("train",)),
        ListSpec("val_cifar10.txt", ("cifar10",), _c10_val, True, ("test",)),
        ListSpec("test_cifar10.txt", ("cifar10",), _c10_test, True, ("test",)),
    ],
}
LIST_DIR_OF = {"cifar10_ad": "cifar10"}  # benchmarks that share another benchmark's image lists


def format_imglist(entries: list[tuple[str, int]]) -> str:
    return "".join(f"{p} {label}\n" for p, label in entries)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write_imglists(benchmark: str, root: Path, out_dir: Path | None = None) -> dict[str, int | None]:
    """Write every list of ``benchmark`` that the prepared images allow; {file name: lines or None}.

    A list already in ``out_dir`` that this function did not write (OpenOOD's own, copied from an OpenOOD
    data directory, or one edited by hand) is kept: OpenOOD's ID/OOD splits are the reference and must not
    be replaced by ours. What was written is recorded in ``<root>/benchmark_imglist/.<benchmark>.generated.json``.
    """
    if benchmark not in BENCHMARK_LISTS:
        raise DataError(f"unknown benchmark '{benchmark}' (known: {', '.join(sorted(BENCHMARK_LISTS))})")
    out_dir = out_dir or root / "benchmark_imglist" / LIST_DIR_OF.get(benchmark, benchmark)
    manifest_path = root / "benchmark_imglist" / f".{benchmark}.generated.json"
    try:
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    except ValueError:
        manifest = {}
    images_root = root / IMAGE_DIR
    written: dict[str, int | None] = {}
    for spec in BENCHMARK_LISTS[benchmark]:
        target = out_dir / spec.fname
        key = str(target.resolve())
        entries = spec.build(images_root) if spec.build else None
        text = None if entries is None else format_imglist(entries)
        if target.is_file():
            current = target.read_text()
            if manifest.get(key) != _digest(current) and current != text:  # not ours: keep it
                written[spec.fname] = sum(1 for line in current.splitlines() if line.strip())
                continue
        if entries is None:
            written[spec.fname] = None
            continue
        if not (target.is_file() and target.read_text() == text):
            write_text(target, text)
        manifest[key] = _digest(text)
        written[spec.fname] = len(entries)
    if manifest:
        write_json(manifest_path, manifest)
    return written


# ============================================================================================ prepare
