"""Benchmark definitions: which image lists make up ID train/val/test and the near/far OOD sets.

A benchmark is configured like this (``configs/benchmarks/<name>.yml``)::

    benchmark:
      name: digits                      # BENCHMARKS entry: 'imglist' for plain lists, or a named benchmark
      data_root: null                   # null -> $OPENOOD_EXT_DATA, else ./data
      imglist_dir: benchmark_imglist/digits
      num_classes: 6
      preprocessor: {image_size: 8, channels: 1, mean: [0.5], std: [0.5]}
      id: {train: train.txt, val: val.txt, test: test.txt}
      ood:
        val: val_ood.txt                # OOD split for parameter search (optional)
        near: {digits6to9: test_near_digits6to9.txt}
        far: {textures: test_far_textures.txt}
      csid: {digits_noisy: test_csid_noisy.txt}   # covariate-shifted ID sets (optional, see below)

``csid`` lists OpenOOD v1.5's covariate-shifted ID sets (CIFAR-10-C, ImageNet-V2/-C/-R, ...): images of
the ID classes, labelled with their class, under another distribution. They are scored only in the
full-spectrum setting (``fsood: true`` / ``Evaluator.eval_ood(fsood=True)``), where they join the ID
side of every OOD metric; like OOD sets, absent ones are skipped and listed (``missing_reason``).

OpenOOD-style data roots (``configs/benchmarks/cifar10.yml``) use three optional extensions:

* ``image_dir``: the image lists' paths are relative to ``data_root/image_dir`` (OpenOOD keeps its
  images under ``data/images_classic`` and ``data/images_largescale``); default: ``data_root`` itself.
* ``imglist_dir`` may be a list of directories searched in order for each image list file, e.g.
  ``[${benchmark.data_root}/benchmark_imglist/cifar10, benchmark_imglist/cifar10]``: lists written
  next to the data (by ``openood-ext data prepare``, or an OpenOOD data directory's own
  ``benchmark_imglist/``) win over the committed ones.
* a split may be a mapping ``{imglist: test_texture.txt, image_dir: images_classic}`` to take its images
  from another directory under ``data_root`` (ImageNet's Textures set lives in ``images_classic``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import ConfigError, DataError
from .imglist import ImglistDataset, SkipCounter, read_imglist
from .registry import BENCHMARKS
from .transforms import build_transform, image_mode

REPO_ROOT = Path(__file__).resolve().parents[2]
ID_SPLITS = ("train", "val", "test")
OOD_GROUPS = ("near", "far")
CSID_GROUP = "csid"  # covariate-shifted ID sets: ID labels, evaluated only in the full-spectrum setting


def resolve_path(path: str | os.PathLike) -> Path:
    """A relative path is taken from the working directory, else from the repository root."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists() or not (REPO_ROOT / p).exists():
        return p
    return REPO_ROOT / p


def named_class(value: Any, classes: list[str] | tuple[str, ...], dataset: str) -> str:
    """``benchmark.normal_class`` as a class name of ``dataset``: an index into ``classes`` or a name in it;
    anything else is a one-line ConfigError listing the valid choices."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < len(classes):
            raise ConfigError(f"benchmark.normal_class: {value} is not an {dataset} class index (0..{len(classes) - 1})")
        value = classes[value]
    if value not in classes:
        raise ConfigError(f"benchmark.normal_class: {value!r} is not an {dataset} class ({', '.join(classes)})")
    return str(value)


def default_data_root() -> Path:
    return Path(os.environ.get("OPENOOD_EXT_DATA") or "data")


@dataclass(frozen=True)
class Split:
    """One image list of a benchmark. ``group`` is id_train/id_val/id_test/ood_val/near/far/csid/oe.

    ``image_root``: directory the list's paths are relative to (None: the benchmark's default).
    """

    name: str
    group: str
    imglist: Path
    image_root: Path | None = None

    @property
    def is_ood(self) -> bool:
        return self.group in ("ood_val", "near", "far", "oe")


@BENCHMARKS.register("imglist")
class Benchmark:
    """A benchmark given entirely by image lists on disk (no preparation step)."""

    def __init__(self, num_classes: int, id: Mapping[str, Any], ood: Mapping[str, Any] | None = None,
                 imglist_dir: str | list[str] = ".", data_root: str | None = None,
                 preprocessor: Mapping[str, Any] | None = None, title: str | None = None,
                 on_bad_image: str = "error", image_dir: str | None = None, oe: Any = None,
                 csid: Mapping[str, Any] | None = None):
        self.title = title or getattr(type(self), "_registry_name", "imglist")
        self.num_classes = int(num_classes)
        dirs = [imglist_dir] if isinstance(imglist_dir, (str, os.PathLike)) else list(imglist_dir or ["."])
        if not dirs:
            raise ConfigError("benchmark.imglist_dir: give a directory or a list of directories")
        self.imglist_dirs = [resolve_path(d) for d in dirs]
        self.imglist_dir = self.imglist_dirs[-1]  # the committed lists (last in the search order)
        self.data_root = Path(data_root) if data_root else default_data_root()
        self.image_root = self.data_root / image_dir if image_dir else self.data_root
        self.preprocessor = dict(preprocessor or {})
        self.on_bad_image = on_bad_image
        missing = [k for k in ID_SPLITS if k not in (id or {})]
        if missing:
            raise ConfigError(f"benchmark.id: missing split(s) {', '.join(missing)} (need train, val, test)")
        ood = dict(ood or {})
        unknown = set(ood) - {"val", *OOD_GROUPS}
        if unknown:
            raise ConfigError(f"benchmark.ood: unknown key(s) {sorted(unknown)} (expected val, near, far)")
        self._splits = [self._make_split(f"id_{k}", f"id_{k}", id[k]) for k in ID_SPLITS]
        if ood.get("val"):
            self._splits.append(self._make_split("ood_val", "ood_val", ood["val"]))
        for group in OOD_GROUPS:
            for set_name, entry in (ood.get(group) or {}).items():
                self._splits.append(self._make_split(set_name, group, entry))
        for set_name, entry in (csid or {}).items():  # covariate-shifted ID sets (full-spectrum setting)
            if any(s.name == set_name for s in self._splits):
                raise ConfigError(f"benchmark.csid: '{set_name}' is already the name of another split")
            self._splits.append(self._make_split(set_name, CSID_GROUP, entry))
        # Outlier-exposure images for training (never evaluated): benchmark.oe
        self.oe_split = self._make_split("oe", "oe", oe) if oe else None

    def locate_imglist(self, fname: str | os.PathLike) -> Path:
        """The first ``imglist_dir`` holding ``fname``; the last directory's path when none does."""
        for d in self.imglist_dirs:
            if (d / fname).is_file():
                return d / fname
        return self.imglist_dirs[-1] / fname

    def _make_split(self, name: str, group: str, entry: Any) -> Split:
        if isinstance(entry, Mapping):
            if "imglist" not in entry:
                raise ConfigError(f"benchmark split '{name}': a mapping needs 'imglist' (and optionally "
                                  f"'image_dir'), got keys {sorted(entry)}")
            image_root = self.data_root / entry["image_dir"] if entry.get("image_dir") else None
            return Split(name, group, self.locate_imglist(entry["imglist"]), image_root)
        return Split(name, group, self.locate_imglist(entry))

    def image_root_of(self, split: Split) -> Path:
        """Directory the split's image paths are relative to."""
        return split.image_root or self.image_root

    # ------------------------------------------------------------------ structure
    @property
    def name(self) -> str:
        return self.title

    def prepare(self) -> None:
        """Make the images available (download/generate). Plain image-list benchmarks have nothing to do."""

    def splits(self, groups: tuple[str, ...] | None = None) -> list[Split]:
        return [s for s in self._splits if groups is None or s.group in groups]

    def split(self, name: str) -> Split:
        if name == "oe" and self.oe_split is not None:
            return self.oe_split
        for s in self._splits:
            if s.name == name:
                return s
        raise ConfigError(f"benchmark {self.name}: no split named {name!r}")

    def ood_sets(self, group: str) -> list[Split]:
        return self.splits((group,))

    # ------------------------------------------------------------------ availability
    def missing_reason(self, split: Split) -> str | None:
        """Why a split cannot be evaluated (image list or all of its images absent), or None.

        Asked of the optional splits (OOD sets, covariate-shifted ID sets), which are skipped and listed
        when absent, never downloaded."""
        if not split.imglist.is_file():
            return f"image list {split.imglist} not found"
        entries = read_imglist(split.imglist)
        if not entries:  # an empty list is a broken benchmark, not an absent dataset
            raise DataError(f"{split.imglist}: image list of {'csid' if split.group == CSID_GROUP else 'OOD'} set '{split.name}' is empty "
                            f"(expected '<path> <label>' lines)")
        root = self.image_root_of(split)
        present = sum((root / e.path).exists() for e in entries)
        if present == 0:
            return f"none of its {len(entries)} images are under {root}"
        return None

    # ------------------------------------------------------------------ loading
    def dataset(self, split: Split, train: bool = False) -> ImglistDataset:
        return ImglistDataset(split.imglist, self.image_root_of(split), build_transform(self.preprocessor, train),
                              mode=image_mode(self.preprocessor), on_bad_image=self.on_bad_image,
                              label_override=-1 if split.is_ood else None,
                              num_classes=None if split.is_ood else self.num_classes)

    def loader(self, split: Split, batch_size: int = 128, num_workers: int = 0, train: bool = False,
               seed: int = 0) -> torch.utils.data.DataLoader:
        """DataLoader yielding ``(images, labels, n_skipped)``; shuffled (seeded) when ``train``."""
        generator = torch.Generator().manual_seed(seed) if train else None
        return torch.utils.data.DataLoader(
            self.dataset(split, train), batch_size=batch_size, shuffle=train, generator=generator,
            num_workers=num_workers, collate_fn=SkipCounter(), drop_last=False,
            persistent_workers=False)

    def preprocessing_key(self) -> dict:
        key = {"preprocessor": self.preprocessor, "data_root": str(self.data_root.resolve())}
        if self.image_root != self.data_root:
            key["image_root"] = str(self.image_root.resolve())
        split_roots = {s.name: str(s.image_root.resolve()) for s in self._splits if s.image_root is not None}
        if split_roots:
            key["split_image_roots"] = split_roots
        return key

