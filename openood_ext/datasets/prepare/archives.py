"""Archive ingestion for ``openood-ext data prepare``: published archives, image tars, idx directories and
OpenOOD data directories turned into images under ``<root>/images_classic/<set>/`` (see :mod:`.` for the
layout), with an extraction journal so an interrupted extraction is never mistaken for a complete set."""

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
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np
from PIL import Image

from ...errors import DataError
from ...utils.io import write_json, write_stream, write_with
from ...utils.runtime import get_logger, progress
from ..sources import LARGESCALE_SETS, MANUAL_HINTS, SOURCES, verify

IMAGE_DIR = "images_classic"
LARGE_IMAGE_DIR = "images_largescale"
IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
HOLDOUT_SEED = 0
MARKER_DIR = ".prepared"
JOURNAL = ".extracting.json"  # under images_classic: archives whose extraction started and has not finished
#: Images per class of the published sets. A class with fewer images next to one with the full count is an
#: incomplete copy (an interrupted prepare); smaller subsets with no full class (tests, samples) pass.
#: (benchmark name, the image sets it reads): what ``data prepare BENCHMARK --from ...`` may extract
Wanted = tuple[str, frozenset[str]]
KNOWN_PER_CLASS = {"cifar10/train": 5000, "cifar10/test": 1000, "cifar100/train": 500, "cifar100/test": 100}


def _save_png(image: Image.Image, dest: Path) -> None:
    """One converted image, written atomically (an interrupted conversion leaves no truncated PNG)."""
    write_stream(dest, lambda fh: image.save(fh, format="PNG"))


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

COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")  # gzip, bzip2, xz, zstd


def _check_tar_end(archive: Path, offset: int) -> None:
    """EOFError unless an uncompressed tar has its end-of-archive marker (two zero blocks) at ``offset``,
    where its last member ended: tarfile takes a file cut at a member boundary for a complete archive.
    (A cut compressed tar already fails in its decompressor.)"""
    with open(archive, "rb") as fh:
        if fh.read(6).startswith(COMPRESSED_MAGIC):
            return
        fh.seek(offset)
        if fh.read(2 * tarfile.BLOCKSIZE) != bytes(2 * tarfile.BLOCKSIZE):
            raise EOFError(f"no end-of-archive marker after the last member at byte {offset}")


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
                          desc: str | None = None, wanted: Wanted | None = None) -> dict[str, int]:
    """Stream the image members of a tar or zip to ``images_root``; no decoding, no re-encoding.

    A file already on disk with the member's size is kept (a re-run is cheap and resumes a partial one).
    ``limit`` stops after that many image members (tests use small subsets). ``wanted``: (benchmark, the
    sets it reads); members of other sets are not extracted, and an archive holding none of them is a
    DataError with nothing written. Returns images per set.
    """
    counts: dict[str, int] = {}
    skipped: dict[str, int] = {}
    made: set[Path] = set()

    def put(dest_rel: str, size: int, read: Callable[[], bytes]) -> None:
        top = PurePosixPath(dest_rel).parts[0]
        if wanted is not None and top not in wanted[1]:
            skipped[top] = skipped.get(top, 0) + 1
            return
        dest = images_root / dest_rel
        if dest.parent not in made:
            dest.parent.mkdir(parents=True, exist_ok=True)
            made.add(dest.parent)
        if not (dest.is_file() and dest.stat().st_size == size):
            data = read()
            write_with(dest, lambda tmp: tmp.write_bytes(data))
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
                else:
                    _check_tar_end(archive, tf.offset)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        early = isinstance(exc, EOFError) or "end of data" in str(exc) or "truncated" in str(exc).lower()
        why = "the archive ends early: truncated or an incomplete download" if early else "cannot read the archive"
        raise DataError(f"{archive}: {why} ({exc})") from None
    if not counts and skipped:
        _journal(images_root, archive, done=True)  # nothing was written
        raise DataError(f"{archive}: holds {', '.join(f'{k} ({n} images)' for k, n in sorted(skipped.items()))}, "
                        f"which {wanted[0]} does not use (it reads {', '.join(sorted(wanted[1]))}); "
                        f"nothing was extracted")
    if skipped:
        get_logger().info("%s: not extracted (not used by %s): %s", archive.name, wanted[0],
                          ", ".join(f"{k} {n} images" for k, n in sorted(skipped.items())))
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
                        _save_png(Image.fromarray(img, "RGB"), dest)
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
                _save_png(Image.fromarray(img, "L"), dest)
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
            _save_png(Image.fromarray(np.ascontiguousarray(X[:, :, :, i]), "RGB"), dest)
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


def _refuse_unused(path: Path, set_name: str, wanted: Wanted | None) -> None:
    """DataError before anything is written when ``path`` holds a set the benchmark does not read."""
    if wanted is not None and set_name not in wanted[1]:
        raise DataError(f"--from {path}: holds {set_name}, which {wanted[0]} does not use (it reads "
                        f"{', '.join(sorted(wanted[1]))}); nothing was extracted")


def ingest(path: Path, root: Path, benchmark: str | None = None, limit: int | None = None,
           wanted: Wanted | None = None) -> dict[str, int]:
    """Bring one ``--from`` path into ``root``; returns images per set. ``wanted``: (benchmark name, the
    sets it reads): a source of other sets only is refused before anything is written."""
    path = Path(path).expanduser()
    images_root = root / IMAGE_DIR
    log = get_logger()
    if not path.exists():
        raise DataError(f"--from {path}: no such file or directory")
    if path.is_dir():
        if any(_idx_path(path, stem) for stems in IDX_FILES.values() for stem in stems):
            set_name = identify_idx_dir(path)
            _refuse_unused(path, set_name, wanted)
            return convert_idx_dir(path, images_root, set_name)
        if (path / IMAGE_DIR).is_dir() or (path / "benchmark_imglist").is_dir():
            return ingest_openood_dir(path, root, benchmark)
        if path.name in KNOWN_SETS:
            _refuse_unused(path, path.name, wanted)
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
        _refuse_unused(path, set_name, wanted)
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
        counts = extract_image_archive(path, images_root, limit, wanted=wanted)
        st = path.stat()
        for set_name, n in counts.items():
            write_marker(images_root, set_name, path.name, {"archive": str(path.resolve()), "bytes": st.st_size,
                                                              "images": n, "complete": limit is None})
        return counts
    if path.name.lower().endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")):
        raise DataError(f"--from {path}: not a readable {path.suffix.lstrip('.')} archive (truncated, or an "
                        f"incomplete download?)")
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
                write_with(dest, lambda tmp, f=f: shutil.copyfile(f, tmp))
    return counts


# ============================================================================================ image lists
