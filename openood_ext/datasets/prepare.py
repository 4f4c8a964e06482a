"""``openood-ext data prepare``: turn published archives (downloaded or local) into images + image lists.

Layout, the same as an OpenOOD data directory so either can stand in for the other::

    <root>/images_classic/<set>/...          images (cifar10/train/airplane/0000.jpg, mnist/test/7/00000.png)
    <root>/images_largescale/<set>/...       ImageNet-scale sets (only ever linked, never converted here)
    <root>/benchmark_imglist/<benchmark>/    image lists written for exactly the images that are there
    <root>/downloads/<set>/                  published archives (fetched, or put there by hand)

Inputs (``--from``) are recognised by content, not by command-line flags:

* a tar (any compression) of ``<set>/<split>/<class>/<file>`` images, like ``../shared/data/*.tar``:
  its members are streamed straight to disk, never decoded or re-encoded;
* the published archives: ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` (decoded to PNG,
  numbered 1-based per class like OpenOOD), ``dtd-r1.0.1.tar.gz`` (streamed), SVHN's ``test_32x32.mat``;
* a directory of MNIST-format idx files (``/usr/share/datasets/fashion-mnist``): MNIST or Fashion-MNIST,
  told apart by checksum;
* a directory named after a set (``.../images_classic/tin``), or an OpenOOD data directory: linked, and
  the OpenOOD image lists of the benchmark are copied next to the data.

Image lists of sets we can enumerate are generated deterministically (sorted paths, seeded hold-outs);
lists that only OpenOOD can define (its filtered Tiny-ImageNet and Places365 subsets) come from an
OpenOOD data directory or are reported absent, and ``test_ood`` skips those sets.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import struct
import tarfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from ..errors import DataError
from ..utils.io import write_json, write_text
from ..utils.runtime import get_logger, progress
from .sources import LARGESCALE_SETS, MANUAL_HINTS, SOURCES, download, verify

IMAGE_DIR = "images_classic"
LARGE_IMAGE_DIR = "images_largescale"
IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
HOLDOUT_SEED = 0
MARKER_DIR = ".prepared"
JOURNAL = ".extracting.json"  # under images_classic: archives whose extraction started and has not finished
#: Images per class of the published sets. A class with fewer images next to one with the full count is an
#: incomplete copy (an interrupted prepare); smaller subsets with no full class (tests, samples) pass.
KNOWN_PER_CLASS = {"cifar10/train": 5000, "cifar10/test": 1000, "cifar100/train": 500, "cifar100/test": 100}


def journal_path(images_root: Path) -> Path:
    return images_root / JOURNAL


def unfinished_extractions(images_root: Path) -> dict[str, dict]:
    """Archive name -> {path, sets so far} of extractions that started and never finished."""
    try:
        data = json.loads(journal_path(images_root).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _journal(images_root: Path, archive: Path, done: bool) -> None:
    entries = unfinished_extractions(images_root)
    if done:
        entries.pop(archive.name, None)
    else:
        entries[archive.name] = {"path": str(archive.resolve()), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    if entries:
        write_json(journal_path(images_root), entries)
    elif journal_path(images_root).exists():
        journal_path(images_root).unlink()


def check_class_counts(rel: str, entries: list[tuple[str, int]] | None) -> None:
    """DataError when ``rel``'s per-class counts show an incomplete copy of a set of known size."""
    expected = KNOWN_PER_CLASS.get(rel)
    if expected is None or not entries:
        return
    counts = np.bincount([label for _, label in entries])
    if (counts == expected).any() and (counts < expected).any():
        short = int(np.argmin(counts))
        raise DataError(f"{rel}: class {short} has {counts[short]} of {expected} images ({len(entries)} of "
                        f"{expected * len(counts)} in all): an incomplete copy, e.g. an interrupted prepare; "
                        f"rerun with --from the {rel.split('/')[0]} archive to complete it")


# ============================================================================================ helpers
def is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_EXTS


def safe_relpath(name: str) -> str:
    """A member name as a relative POSIX path, refusing absolute paths and ``..``."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise DataError(f"archive member {name!r}: unsafe path (absolute or containing '..')")
    return str(p)


def images_under(directory: Path) -> list[Path]:
    """Image files below ``directory`` (following links), sorted by their relative path."""
    if not directory.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath) / f for f in filenames if not f.startswith(".") and is_image_name(f)]
    return sorted(found, key=lambda p: p.relative_to(directory).as_posix())


def write_marker(images_root: Path, set_name: str, source: str, info: dict) -> None:
    write_json(images_root / set_name / MARKER_DIR / f"{source}.json",
               {"source": source, "prepared_at": time.strftime("%Y-%m-%d %H:%M:%S"), **info})


# ============================================================================================ ingestion
# Each ingester writes images under <root>/images_classic and returns {set name: images written or kept}.

def _tar_destination(name: str) -> str | None:
    """Where an image member of a ``<set>/...`` tar goes under images_classic (None: not an image)."""
    if not is_image_name(name):
        return None
    rel = safe_relpath(name)
    parts = PurePosixPath(rel).parts
    if parts[0] == "dtd" and len(parts) >= 4 and parts[1] == "images":
        return "/".join(("texture",) + parts[2:])  # dtd/images/<class>/<f> -> texture/<class>/<f> (OpenOOD)
    if parts[0] == "texture" and len(parts) == 4 and parts[1] in ("test", "images"):
        return "/".join(("texture",) + parts[2:])  # texture/test/<class>/<f> -> texture/<class>/<f>
    return rel


def extract_image_archive(archive: Path, images_root: Path, limit: int | None = None,
                          desc: str | None = None) -> dict[str, int]:
    """Stream the image members of a tar or zip to ``images_root``; no decoding, no re-encoding.

    A file already on disk with the member's size is kept (a re-run is cheap and resumes a partial one).
    ``limit`` stops after that many image members (tests use small subsets). Returns images per set.
    """
    counts: dict[str, int] = {}
    made: set[Path] = set()

    def put(dest_rel: str, size: int, read: Callable[[], bytes]) -> None:
        dest = images_root / dest_rel
        if dest.parent not in made:
            dest.parent.mkdir(parents=True, exist_ok=True)
            made.add(dest.parent)
        if not (dest.is_file() and dest.stat().st_size == size):
            tmp = dest.with_name(f".{dest.name}.tmp")
            tmp.write_bytes(read())
            os.replace(tmp, dest)
        top = PurePosixPath(dest_rel).parts[0]
        counts[top] = counts.get(top, 0) + 1

    label = desc or archive.name
    get_logger().info("extracting %s (%.0f MB) into %s ...", archive, archive.stat().st_size / 1e6, images_root)
    _journal(images_root, archive, done=False)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in progress(zf.infolist(), desc=f"extract {label}"):
                    dest_rel = None if info.is_dir() else _tar_destination(info.filename)
                    if dest_rel is None:
                        continue
                    put(dest_rel, info.file_size, lambda info=info: zf.read(info))
                    if limit is not None and sum(counts.values()) >= limit:
                        break
        else:
            # "r|*": sequential streaming, the fastest way through an (optionally compressed) tar
            with tarfile.open(archive, "r|*") as tf:
                for member in progress(tf, desc=f"extract {label}"):
                    dest_rel = _tar_destination(member.name) if member.isfile() else None
                    if dest_rel is None:
                        continue
                    fh = tf.extractfile(member)
                    put(dest_rel, member.size, fh.read)
                    if limit is not None and sum(counts.values()) >= limit:
                        break
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise DataError(f"{archive}: cannot read the archive ({exc})") from None
    if not counts:
        raise DataError(f"{archive}: no image files in the archive (expected <set>/<split>/<class>/<file>)")
    if limit is None:
        _journal(images_root, archive, done=True)  # a limited (partial) extraction stays unfinished
    return counts


def convert_cifar_python(archive: Path, images_root: Path, set_name: str) -> dict[str, int]:
    """``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` -> PNGs, OpenOOD's naming.

    ``<set>/<train|test>/<class>/<NNNN>.png``, numbered from 1 per class in the archive's order
    (training batches 1..5 for CIFAR-10), which is how OpenOOD's image lists name them.
    """
    ten = set_name == "cifar10"
    with tarfile.open(archive, "r:*") as tf:
        def load(member_suffix: str) -> dict:
            member = next((m for m in tf.getmembers() if m.name.endswith("/" + member_suffix)), None)
            if member is None:
                raise DataError(f"{archive}: member */{member_suffix} not found (not a CIFAR python archive?)")
            return pickle.load(tf.extractfile(member), encoding="bytes")  # verified archive (checksum)

        meta = load("batches.meta" if ten else "meta")
        names = [n.decode() for n in meta[b"label_names" if ten else b"fine_label_names"]]
        batches = {"train": [f"data_batch_{i}" for i in range(1, 6)] if ten else ["train"],
                   "test": ["test_batch" if ten else "test"]}
        counts = 0
        for split, members in batches.items():
            per_class = [0] * len(names)
            for member in members:
                batch = load(member)
                data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
                labels = batch[b"labels" if ten else b"fine_labels"]
                for img, lab in zip(progress(data, desc=f"{set_name} {member}"), labels):
                    per_class[lab] += 1
                    dest = images_root / set_name / split / names[lab] / f"{per_class[lab]:04d}.png"
                    if not dest.is_file():
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        Image.fromarray(img, "RGB").save(dest)
                    counts += 1
    return {set_name: counts}


IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: unreadable idx file ({exc})") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte idx file (bad magic number)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: idx header says {dims} but holds {data.size} bytes (truncated?)")
    return data.reshape(dims)


def _idx_path(directory: Path, stem: str) -> Path | None:
    for cand in (directory / f"{stem}.gz", directory / stem):
        if cand.is_file():
            return cand
    return None


def identify_idx_dir(directory: Path) -> str:
    """``mnist`` or ``fashionmnist`` by checksum of the files in ``directory``."""
    for set_name in ("mnist", "fashionmnist"):
        remote = {r.filename: r for r in SOURCES[set_name].files}
        checked = 0
        for name, r in remote.items():
            path = directory / name
            if path.is_file():
                if verify(path, r) is not None:
                    break
                checked += 1
        else:
            if checked:
                return set_name
    raise DataError(f"{directory}: idx files match neither the published MNIST nor Fashion-MNIST files "
                    f"(checksums differ)")


def convert_idx_dir(directory: Path, images_root: Path, set_name: str) -> dict[str, int]:
    """MNIST-format idx files -> ``<set>/<train|test>/<label>/<index:05d>.png`` (lossless)."""
    total = 0
    for split, (img_stem, lab_stem) in IDX_FILES.items():
        img_path, lab_path = _idx_path(directory, img_stem), _idx_path(directory, lab_stem)
        if img_path is None or lab_path is None:
            continue
        images, labels = _read_idx(img_path), _read_idx(lab_path)
        if images.ndim != 3 or len(images) != len(labels):
            raise DataError(f"{img_path}: {images.shape} images do not match {len(labels)} labels in {lab_path}")
        for d in {int(v) for v in np.unique(labels)}:
            (images_root / set_name / split / str(d)).mkdir(parents=True, exist_ok=True)
        for i, (img, lab) in enumerate(zip(progress(images, desc=f"{set_name} {split}"), labels)):
            dest = images_root / set_name / split / str(int(lab)) / f"{i:05d}.png"
            if not dest.is_file():
                Image.fromarray(img, "L").save(dest)
        total += len(images)
    if total == 0:
        raise DataError(f"{directory}: no complete pair of idx files "
                        f"({', '.join(f'{a}[.gz] + {b}[.gz]' for a, b in IDX_FILES.values())})")
    return {set_name: total}


def convert_svhn_mat(path: Path, images_root: Path) -> dict[str, int]:
    """SVHN ``test_32x32.mat`` -> ``svhn/test/<index:06d>_<digit>.png`` (label 10 means digit 0)."""
    from scipy.io import loadmat
    try:
        mat = loadmat(path)
    except Exception as exc:  # scipy raises assorted types for a bad file
        raise DataError(f"{path}: not a readable SVHN .mat file ({exc})") from None
    X, y = mat["X"], mat["y"].ravel()
    split = "train" if path.name.startswith("train") else "test"
    out = images_root / "svhn" / split
    out.mkdir(parents=True, exist_ok=True)
    for i in progress(range(X.shape[3]), desc=f"svhn {split}"):
        dest = out / f"{i:06d}_{int(y[i]) % 10}.png"
        if not dest.is_file():
            Image.fromarray(np.ascontiguousarray(X[:, :, :, i]), "RGB").save(dest)
    return {"svhn": int(X.shape[3])}


def link_set(source: Path, images_root: Path, set_name: str) -> dict[str, int]:
    """Make ``images_root/set_name`` point at an existing directory of images (no copy)."""
    dest = images_root / set_name
    source = source.resolve()
    if dest.is_symlink() or dest.exists():
        if dest.resolve() == source:
            return {set_name: len(images_under(dest))}
        raise DataError(f"{dest} already exists; remove it to take {set_name} from {source}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.symlink_to(source, target_is_directory=True)
    return {set_name: len(images_under(dest))}


KNOWN_ARCHIVES = {r.filename: name for name, src in SOURCES.items() for r in src.files}
KNOWN_SETS = set(SOURCES) | set(MANUAL_HINTS)


def ingest(path: Path, root: Path, benchmark: str | None = None, limit: int | None = None) -> dict[str, int]:
    """Bring one ``--from`` path into ``root``; returns images per set."""
    path = Path(path).expanduser()
    images_root = root / IMAGE_DIR
    log = get_logger()
    if not path.exists():
        raise DataError(f"--from {path}: no such file or directory")
    if path.is_dir():
        if any(_idx_path(path, stem) for stems in IDX_FILES.values() for stem in stems):
            set_name = identify_idx_dir(path)
            return convert_idx_dir(path, images_root, set_name)
        if (path / IMAGE_DIR).is_dir() or (path / "benchmark_imglist").is_dir():
            return ingest_openood_dir(path, root, benchmark)
        if path.name in KNOWN_SETS:
            target_root = root / LARGE_IMAGE_DIR if path.name in LARGESCALE_SETS else images_root
            return link_set(path, target_root, path.name)
        subsets = [d for d in sorted(path.iterdir()) if d.is_dir() and d.name in KNOWN_SETS]
        if subsets:
            counts = {}
            for d in subsets:
                counts.update(link_set(d, root / LARGE_IMAGE_DIR if d.name in LARGESCALE_SETS else images_root,
                                       d.name))
            return counts
        raise DataError(f"--from {path}: a directory must hold MNIST-format idx files, be named after a set "
                        f"({', '.join(sorted(KNOWN_SETS))}), or be an OpenOOD data directory")
    set_name = KNOWN_ARCHIVES.get(path.name)
    if set_name is not None:
        remote = next(r for r in SOURCES[set_name].files if r.filename == path.name)
        problem = verify(path, remote)
        if problem is not None:
            raise DataError(f"{path}: {problem}; not the published {path.name}")
        if set_name in ("cifar10", "cifar100"):
            return convert_cifar_python(path, images_root, set_name)
        if set_name == "svhn":
            return convert_svhn_mat(path, images_root)
        if set_name in ("mnist", "fashionmnist"):
            raise DataError(f"{path}: pass the directory holding the idx files, not one file")
        log.info("extracting %s", path)
        return extract_image_archive(path, images_root, limit)
    if path.suffix == ".mat":
        return convert_svhn_mat(path, images_root)
    if tarfile.is_tarfile(path) or zipfile.is_zipfile(path):
        counts = extract_image_archive(path, images_root, limit)
        st = path.stat()
        for set_name, n in counts.items():
            write_marker(images_root, set_name, path.name, {"archive": str(path.resolve()), "bytes": st.st_size,
                                                              "images": n, "complete": limit is None})
        return counts
    raise DataError(f"--from {path}: not an archive or directory this command knows (tar/zip of "
                    f"<set>/<split>/<class>/<file> images, {', '.join(sorted(KNOWN_ARCHIVES))})")


def ingest_openood_dir(path: Path, root: Path, benchmark: str | None) -> dict[str, int]:
    """Link the image sets of an OpenOOD data directory and copy the benchmark's image lists."""
    counts: dict[str, int] = {}
    for kind in (IMAGE_DIR, LARGE_IMAGE_DIR):
        if (path / kind).is_dir():
            for d in sorted((path / kind).iterdir()):
                if d.is_dir() and not (root / kind / d.name).exists():
                    counts.update(link_set(d, root / kind, d.name))
    if benchmark and (path / "benchmark_imglist" / benchmark).is_dir():
        for f in sorted((path / "benchmark_imglist" / benchmark).glob("*.txt")):
            dest = root / "benchmark_imglist" / benchmark / f.name
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, dest)
    return counts


# ============================================================================================ image lists
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
    ],
    "cifar100": [
        ListSpec("train_cifar100.txt", ("cifar100",), _c100_train, True, ("train",)),
        ListSpec("val_cifar100.txt", ("cifar100",), _c100_val, True, ("test",)),
        ListSpec("test_cifar100.txt", ("cifar100",), _c100_test, True, ("test",)),
        ListSpec("test_cifar10.txt", ("cifar10",), lambda r: all_images(r, "cifar10/test")),
        *_ood_sets(),
    ],
    "imagenet200": [
        *_openood_only([("train_imagenet200.txt", "imagenet_1k"), ("val_imagenet200.txt", "imagenet_1k"),
                        ("test_imagenet200.txt", "imagenet_1k"), ("val_openimage_o.txt", "openimage_o"),
                        ("test_ssb_hard.txt", "ssb_hard"), ("test_ninco.txt", "ninco"),
                        ("test_inaturalist.txt", "inaturalist"), ("test_openimage_o.txt", "openimage_o")]),
        ListSpec("test_textures.txt", ("texture",), lambda r: all_images(r, "texture")),
    ],
    "imagenet": [
        *_openood_only([("train_imagenet.txt", "imagenet_1k"), ("val_imagenet.txt", "imagenet_1k"),
                        ("test_imagenet.txt", "imagenet_1k"), ("val_openimage_o.txt", "openimage_o"),
                        ("test_ssb_hard.txt", "ssb_hard"), ("test_ninco.txt", "ninco"),
                        ("test_inaturalist.txt", "inaturalist"), ("test_openimage_o.txt", "openimage_o")]),
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
    import hashlib
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
@dataclass
class PrepareReport:
    benchmark: str
    root: Path
    ingested: dict[str, int] = field(default_factory=dict)
    lists: dict[str, int | None] = field(default_factory=dict)
    absent: dict[str, str] = field(default_factory=dict)  # list file -> why / where to get it
    seconds: float = 0.0


def set_present(images_root: Path, set_name: str, parts: Iterable[str] = ()) -> bool:
    base = images_root / set_name
    parts = list(parts) or [""]
    return all(any(True for _ in _iter_images(base / p)) for p in parts)


def _iter_images(directory: Path) -> Iterator[Path]:
    if not directory.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if is_image_name(f):
                yield Path(dirpath) / f
                return


def _hint(set_name: str, root: Path) -> str:
    src = SOURCES.get(set_name)
    if src and src.files:
        files = ", ".join(r.filename for r in src.files)
        extra = f" ({src.manual})" if src.manual else ""
        return f"put {files} in {root / 'downloads' / set_name}/ or pass --from PATH{extra}"
    return MANUAL_HINTS.get(set_name, f"pass --from PATH with the {set_name} images")


def prepare(benchmark: str, root: str | os.PathLike, sources: Iterable[str | os.PathLike] = (),
            allow_download: bool = True, limit: int | None = None, imglist_dir: Path | None = None,
            timeout: float = 60.0) -> PrepareReport:
    """Ingest ``sources``, download what is still missing (unless ``allow_download`` is False), write lists.

    Raises DataError (one line) when a list the benchmark cannot run without (its ID splits) cannot be
    built; OOD sets that stay absent are reported in ``PrepareReport.absent`` and skipped by test_ood.
    """
    t0 = time.perf_counter()
    if benchmark == "imagenet30":  # read in place from the extracted ss-ood archives (pipelines/ad_imagenet30.py)
        from ..pipelines.ad_imagenet30 import WHERE
        raise DataError(f"cannot prepare imagenet30: {WHERE}; the imagenet30 benchmark reads the extracted folders "
                        f"directly (nothing to prepare)")
    if benchmark == "mvtec":  # not downloadable; its own layout and lists (prepare_mvtec.py)
        from .prepare_mvtec import prepare_mvtec
        return prepare_mvtec(root, sources)
    if benchmark not in BENCHMARK_LISTS:
        raise DataError(f"unknown benchmark '{benchmark}' (known: {', '.join(sorted([*BENCHMARK_LISTS, 'mvtec']))})")
    root = Path(root)
    try:
        (root / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"data root {root}: cannot write there ({exc.strerror or exc}); use --root DIR or "
                        f"OPENOOD_EXT_DATA") from None
    report = PrepareReport(benchmark, root)
    log = get_logger()
    for src in sources:
        counts = ingest(Path(src), root, LIST_DIR_OF.get(benchmark, benchmark), limit=limit)
        log.info("%s: %s", src, ", ".join(f"{k} {v} images" for k, v in counts.items()))
        for k, v in counts.items():
            report.ingested[k] = report.ingested.get(k, 0) + v

    images_root = root / IMAGE_DIR
    specs = BENCHMARK_LISTS[benchmark]
    list_dir = imglist_dir or root / "benchmark_imglist" / LIST_DIR_OF.get(benchmark, benchmark)
    failures: dict[str, str] = {}
    for spec in specs:
        for set_name in spec.sets:
            if spec.build is None or set_name in failures or set_present(images_root, set_name, spec.parts):
                continue
            source = SOURCES.get(set_name)
            if not (allow_download and source and source.files):
                continue
            try:
                paths = [download(r, root / "downloads" / set_name, timeout=timeout) for r in source.files]
            except DataError as exc:
                failures[set_name] = f"download failed: {exc}"
                continue
            if set_name in ("mnist", "fashionmnist"):
                counts = convert_idx_dir(paths[0].parent, images_root, set_name)
            else:
                counts = ingest(paths[0], root, benchmark)
            report.ingested.update(counts)

    unfinished = unfinished_extractions(images_root)
    if unfinished:
        name, info = next(iter(unfinished.items()))
        raise DataError(f"cannot prepare {benchmark}: extracting {name} was interrupted (started {info.get('started')}), "
                        f"so its images under {images_root} are incomplete; rerun with --from {info.get('path')}")
    report.lists = write_imglists(benchmark, root, list_dir)
    required_missing = []
    for spec in specs:
        if report.lists.get(spec.fname) is not None:
            continue
        set_name = spec.sets[0]
        if spec.build is None:
            if (list_dir / spec.fname).is_file():  # an OpenOOD list copied next to the data
                with open(list_dir / spec.fname) as fh:
                    report.lists[spec.fname] = sum(1 for line in fh if line.strip())
                continue
            why = f"needs OpenOOD's {spec.fname} and the {set_name} images; {_hint(set_name, root)}"
        else:
            parts = f" ({'/'.join(spec.parts)})" if spec.parts else ""
            why = f"{set_name}{parts} images not found under {images_root}; " + \
                (failures[set_name] if set_name in failures else _hint(set_name, root))
        report.absent[spec.fname] = why
        if spec.required:
            required_missing.append(why)
    report.seconds = time.perf_counter() - t0
    if required_missing:
        raise DataError(f"cannot prepare {benchmark}: {required_missing[0]}")
    return report
