"""``openood-ext data from-folder``: your own images as a benchmark.

    my_data/                       openood-ext data from-folder my_data/ --name parts \\
      bolt/ 001.jpg ...                --ood other_stuff/ --near screws_m3/
      nut/  ...
      washer/ ...

The class folders (sorted by name: class 0, 1, ...) are split per class into train/val/test with a seeded
shuffle of the sorted file names, so the same tree and seed always give the same lists. Each ``--ood`` /
``--near`` folder (all images below it, any depth) becomes an OOD set labelled -1; ``--ood-val`` one for
parameter search. Image lists go to ``benchmark_imglist/<name>/`` with paths relative to the folders'
common parent (the config's ``data_root``), and ``configs/benchmarks/<name>.yml`` gets the preprocessing,
with mean/std measured on the training images.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ConfigError, DataError
from ..utils.io import write_text
from .image_modes import convert_image
from .prepare import format_imglist, images_under

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
STATS_SAMPLE = 1000


@dataclass
class FromFolderResult:
    config: Path
    imglist_dir: Path
    data_root: Path
    classes: list[str]
    counts: dict[str, int] = field(default_factory=dict)


def _named_dirs(specs: Iterable[str], kind: str) -> list[tuple[str, Path]]:
    out = []
    for spec in specs:
        name, sep, path = str(spec).partition("=")
        if not sep:
            name, path = "", spec
        directory = Path(path).expanduser().resolve()
        name = name or re.sub(r"[^A-Za-z0-9_]+", "_", directory.name).strip("_").lower()
        if not NAME_RE.match(name or "-"):
            raise ConfigError(f"--{kind} {spec}: cannot make a set name from it; use NAME=DIR")
        if not directory.is_dir():
            raise DataError(f"--{kind} {spec}: {directory} is not a directory")
        out.append((name, directory))
    return out


def _split_class(files: list[Path], rng: np.random.Generator, val_fraction: float, test_fraction: float,
                 cls: str) -> tuple[list[Path], list[Path], list[Path]]:
    n = len(files)
    n_val, n_test = int(round(val_fraction * n)), int(round(test_fraction * n))
    if val_fraction > 0:
        n_val = max(n_val, 1)
    if test_fraction > 0:
        n_test = max(n_test, 1)
    if n - n_val - n_test < 1:
        raise DataError(f"class folder '{cls}' has {n} image(s): too few for a train/val/test split "
                        f"(val {val_fraction:g}, test {test_fraction:g})")
    order = rng.permutation(n)
    pick = [files[i] for i in order]
    val, test, train = pick[:n_val], pick[n_val:n_val + n_test], pick[n_val + n_test:]
    return sorted(train), sorted(val), sorted(test)


def _image_stats(paths: list[Path], image_size: int) -> tuple[int, list[float], list[float]]:
    """(channels, mean, std) of up to STATS_SAMPLE training images after resize + centre crop."""
    from torchvision import transforms as T
    sample = paths if len(paths) <= STATS_SAMPLE else [paths[i] for i in np.linspace(0, len(paths) - 1, STATS_SAMPLE).astype(int)]
    modes, arrays = set(), []
    prep = T.Compose([T.Resize(image_size), T.CenterCrop(image_size)])
    for p in sample:
        try:
            with Image.open(p) as img:
                modes.add(img.mode)
                arrays.append(np.asarray(prep(convert_image(img, "RGB", p)), dtype=np.float64) / 255.0)
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{p}: unreadable image ({exc})") from None
    gray = modes <= {"L", "1", "LA", "I;16", "I;16B", "I;16L", "I"}
    data = np.stack(arrays)
    if gray:
        data = data[..., :1]
    mean = data.mean(axis=(0, 1, 2))
    std = data.std(axis=(0, 1, 2))
    return (1 if gray else 3), [round(float(m), 4) for m in mean], [round(max(float(s), 1e-3), 4) for s in std]


def from_folder(directory: str | os.PathLike, name: str, far: Iterable[str] = (), near: Iterable[str] = (),
                ood_val: str | None = None, val_fraction: float = 0.1, test_fraction: float = 0.2,
                seed: int = 0, image_size: int = 32, out: str | os.PathLike = ".",
                force: bool = False) -> FromFolderResult:
    """Write ``benchmark_imglist/<name>/*.txt`` and ``configs/benchmarks/<name>.yml`` under ``out``."""
    if not NAME_RE.match(name):
        raise ConfigError(f"--name {name!r}: use letters, digits, '_', '-' or '.'")
    if not (0 <= val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError(f"--val-fraction {val_fraction} / --test-fraction {test_fraction}: need 0 <= val, "
                          f"0 < test and val + test < 1")
    id_dir = Path(directory).expanduser().resolve()
    if not id_dir.is_dir():
        raise DataError(f"{directory}: not a directory (expected <dir>/<class>/<image>)")
    far_sets, near_sets = _named_dirs(far, "ood"), _named_dirs(near, "near")
    val_sets = _named_dirs([ood_val], "ood-val") if ood_val else []
    names = [n for n, _ in far_sets + near_sets]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"OOD set name(s) {dup} given twice; name them with NAME=DIR")
    for set_name, d in far_sets + near_sets + val_sets:
        if d == id_dir or id_dir in d.parents:
            raise ConfigError(f"OOD folder {d} is inside the ID folder {id_dir}; it would also be read as a class")

    class_dirs = sorted(d for d in id_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    classes = [d for d in class_dirs if images_under(d)]
    if len(classes) < 2:
        raise DataError(f"{id_dir}: found {len(classes)} class folder(s) with images; need at least 2 "
                        f"(<dir>/<class>/<image>)")
    loose = [p for p in id_dir.iterdir() if p.is_file() and p.suffix.lower() in {".png", ".jpg", ".jpeg"}]
    if loose:
        raise DataError(f"{id_dir}: images directly in the ID folder ({loose[0].name}, ...) belong in a class folder")

    all_dirs = [id_dir] + [d for _, d in far_sets + near_sets + val_sets]
    data_root = Path(os.path.commonpath([str(d.parent) for d in all_dirs]))
    rel = lambda p: p.relative_to(data_root).as_posix()  # noqa: E731

    rng = np.random.default_rng(seed)
    lists: dict[str, list[tuple[str, int]]] = {f"train_{name}.txt": [], f"val_{name}.txt": [], f"test_{name}.txt": []}
    train_paths = []
    for label, cdir in enumerate(classes):
        train, val, test = _split_class(images_under(cdir), rng, val_fraction, test_fraction, cdir.name)
        train_paths += train
        for key, part in ((f"train_{name}.txt", train), (f"val_{name}.txt", val), (f"test_{name}.txt", test)):
            lists[key] += [(rel(p), label) for p in part]
    ood_cfg: dict = {}
    for group, sets in (("near", near_sets), ("far", far_sets)):
        for set_name, d in sets:
            files = images_under(d)
            if not files:
                raise DataError(f"{d}: no images for OOD set '{set_name}'")
            lists[f"test_{set_name}.txt"] = [(rel(p), -1) for p in files]
            ood_cfg.setdefault(group, {})[set_name] = f"test_{set_name}.txt"
    for set_name, d in val_sets:
        files = images_under(d)
        if not files:
            raise DataError(f"{d}: no images for the OOD validation set")
        lists[f"val_ood_{set_name}.txt"] = [(rel(p), -1) for p in files]
        ood_cfg["val"] = f"val_ood_{set_name}.txt"

    for entries in lists.values():
        bad = next((p for p, _ in entries if any(c.isspace() for c in p)), None)
        if bad is not None:
            raise DataError(f"{data_root / bad}: a path with white space cannot go into an OpenOOD image list "
                            f"(OpenOOD splits lines at the first space); rename it")
    out = Path(out)
    config = out / "configs" / "benchmarks" / f"{name}.yml"
    imglist_dir = out / "benchmark_imglist" / name
    if not force and (config.exists() or imglist_dir.exists()):
        raise ConfigError(f"benchmark '{name}' exists ({config if config.exists() else imglist_dir}); "
                          f"pick another --name or pass --force")
    channels, mean, std = _image_stats(train_paths, image_size)
    for fname, entries in lists.items():
        write_text(imglist_dir / fname, format_imglist(entries))
    list_dir_cfg = f"benchmark_imglist/{name}" if out.resolve() == Path.cwd().resolve() else str(imglist_dir.resolve())
    yaml_lines = [
        f"# Made by: openood-ext data from-folder {id_dir} --name {name} (seed {seed}, val {val_fraction:g}, "
        f"test {test_fraction:g})",
        "# classes: " + ", ".join(f"{i}={c.name}" for i, c in enumerate(classes)),
        "benchmark:",
        "  name: imglist",
        f"  title: {name}",
        f"  data_root: {data_root}",
        f"  imglist_dir: {list_dir_cfg}",
        f"  num_classes: {len(classes)}",
        "  on_bad_image: error",
        "  preprocessor:",
        f"    image_size: {image_size}",
        f"    resize: {image_size}",
        f"    channels: {channels}",
        f"    mean: {mean}",
        f"    std: {std}",
        "    train_augment: [hflip, random_crop]",
        "    crop_padding: 4",
        "  id:",
        f"    train: train_{name}.txt",
        f"    val: val_{name}.txt",
        f"    test: test_{name}.txt",
    ]
    if ood_cfg:
        yaml_lines.append("  ood:")
        if "val" in ood_cfg:
            yaml_lines.append(f"    val: {ood_cfg['val']}")
        for group in ("near", "far"):
            if group in ood_cfg:
                yaml_lines.append(f"    {group}:")
                yaml_lines += [f"      {k}: {v}" for k, v in ood_cfg[group].items()]
    write_text(config, "\n".join(yaml_lines) + "\n")
    return FromFolderResult(config, imglist_dir, data_root, [c.name for c in classes],
                            {k: len(v) for k, v in lists.items()})
