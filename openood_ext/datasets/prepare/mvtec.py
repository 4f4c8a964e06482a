"""``openood-ext data prepare mvtec --from PATH``: MVTec-AD from its archive(s) or an extracted folder.

MVTec-AD cannot be downloaded here (its licence needs a form): get ``mvtec_anomaly_detection.tar.xz`` (or
the per-class archives, ``bottle.tar.xz`` ...) from https://www.mvtec.com/company/research/datasets/mvtec-ad.
Accepted ``--from`` paths (repeatable):

* the whole archive or a per-class archive (tar, any compression, or zip) whose members are
  ``<class>/train/good/*.png``, ``<class>/test/<defect>/*.png``, ``<class>/ground_truth/<defect>/*_mask.png``
  (one leading ``mvtec_anomaly_detection/`` folder is accepted too): streamed into
  ``<root>/mvtec_anomaly_detection/`` with :func:`~.prepare.extract_image_archive` (each file written to a
  temporary name and renamed; an extraction journal marks an archive whose extraction has not finished, and
  nothing is listed until it has);
* an extracted folder holding class folders, or one class folder: linked, not copied.

Then every class present is checked (training images, normal and anomalous test images, one mask per
anomalous image with the image's size: a one-line error naming both files otherwise), and its image lists
are written where the ``mvtec`` benchmark reads them (``<root>/mvtec_anomaly_detection/.imglists/normal_<class>/``,
see :mod:`openood_ext.datasets.anomaly.mvtec`). Without ``--from`` the command only re-checks and re-lists an
existing tree, or says where to get the archive.
"""

from __future__ import annotations

import tarfile
import time
import zipfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from ...errors import DataError
from ...utils.runtime import get_logger
from ..anomaly.mvtec import MVTEC_CLASSES, WHERE, check_masks, class_lists, default_list_dir, present_classes
from ..imglist import write_imglist_if_changed
from .archives import extract_image_archive, link_set, unfinished_extractions
from .report import PrepareReport

MVTEC_DIR = "mvtec_anomaly_detection"  # under the data root (configs/benchmarks/mvtec.yml's benchmark.root)


def _first_member(path: Path) -> str | None:
    """Name of the first file member of a tar/zip (reads only the start of a compressed stream)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                return next((i.filename for i in zf.infolist() if not i.is_dir()), None)
        with tarfile.open(path, "r|*") as tf:
            return next((m.name for m in tf if m.isfile()), None)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise DataError(f"--from {path}: cannot read the archive ({exc})") from None


def _ingest_archive(path: Path, dest: Path, classes: tuple[str, ...]) -> dict[str, int]:
    first = _first_member(path)
    parts = PurePosixPath(first or "").parts
    if len(parts) >= 2 and parts[0] == MVTEC_DIR and parts[1] in classes:
        target = dest.parent  # members carry the destination's own folder name
    elif parts and parts[0] in classes:
        target = dest
    else:
        raise DataError(f"--from {path}: not an MVTec-AD archive (first member {first!r}; expected "
                        f"<class>/train/good/*.png with <class> one of {', '.join(classes)})")
    return extract_image_archive(path, target)  # {top-level folder (a class, or MVTEC_DIR): images}


def _ingest_folder(path: Path, dest: Path, classes: tuple[str, ...]) -> dict[str, int]:
    if (path / MVTEC_DIR).is_dir():
        path = path / MVTEC_DIR
    found = [path] if path.name in classes else [path / c for c in classes if (path / c).is_dir()]
    if not found:
        raise DataError(f"--from {path}: no MVTec-AD class folder in it (expected {', '.join(classes)})")
    counts: dict[str, int] = {}
    for d in found:
        counts.update(link_set(d, dest, d.name))
    return counts


def prepare_mvtec(root: str | Path, sources: Iterable[str | Path] = ()):
    """Ingest ``sources`` into ``<root>/mvtec_anomaly_detection``, check each class present, write its lists.

    Returns a :class:`~.prepare.PrepareReport` (``ingested``: images per class or source; ``lists``:
    ``normal_<class>/<file>`` -> lines; ``absent``: classes not present). Raises DataError (one line) before
    any list is written when nothing is there, an extraction was interrupted, or a class is incomplete.
    """
    t0 = time.perf_counter()
    root = Path(root)
    dest = root / MVTEC_DIR
    sources = [Path(s).expanduser() for s in sources]
    if not sources and not present_classes(dest):
        raise DataError("cannot prepare mvtec: MVTec-AD is not downloadable here; get "
                        "mvtec_anomaly_detection.tar.xz (or per-class archives) from "
                        "https://www.mvtec.com/company/research/datasets/mvtec-ad and run "
                        "openood-ext data prepare mvtec --from <archive or extracted folder>")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"data root {root}: cannot write there ({exc.strerror or exc}); use --root DIR or "
                        f"OPENOOD_EXT_DATA") from None
    report = PrepareReport("mvtec", root)
    log = get_logger()
    for src in sources:
        if not src.exists():
            raise DataError(f"--from {src}: no such file or directory")
        counts = _ingest_folder(src, dest, MVTEC_CLASSES) if src.is_dir() else \
            _ingest_archive(src, dest, MVTEC_CLASSES)
        log.info("%s: %s", src, ", ".join(f"{k} {v} images" for k, v in counts.items()))
        for k, v in counts.items():
            report.ingested[k] = report.ingested.get(k, 0) + v
    unfinished = unfinished_extractions(dest) | unfinished_extractions(root)
    if unfinished:
        name, info = next(iter(unfinished.items()))
        raise DataError(f"cannot prepare mvtec: extracting {name} was interrupted (started {info.get('started')}), "
                        f"so its images under {dest} are incomplete; rerun with --from {info.get('path')}")
    present = present_classes(dest)
    if not present:
        raise DataError(f"cannot prepare mvtec: no class folder (<class>/train/good) under {dest}; {WHERE}")
    checked = {c: class_lists(dest, c)[0] for c in present}  # all classes checked before any list is written
    for cls, lists in checked.items():
        check_masks(dest, [p for p, _ in lists["test_anomalies.txt"]])
    for cls, lists in checked.items():
        for fname, rows in lists.items():
            write_imglist_if_changed(default_list_dir(dest, cls) / fname, rows)
            report.lists[f"normal_{cls}/{fname}"] = len(rows)
    for cls in MVTEC_CLASSES:
        if cls not in present:
            report.absent[f"normal_{cls}"] = f"class {cls} not under {dest}"
    report.seconds = time.perf_counter() - t0
    return report
