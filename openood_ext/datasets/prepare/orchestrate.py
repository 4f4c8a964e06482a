"""``prepare(benchmark, root, sources)``: ingest the given archives, download what is still missing, write the
benchmark's image lists, and report what stayed absent."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterable, Iterator

from ...errors import DataError
from ...utils.runtime import get_logger
from ..anomaly.imagenet30 import WHERE as IMAGENET30_WHERE
from ..sources import MANUAL_HINTS, SOURCES, download
from .archives import IMAGE_DIR, convert_idx_dir, ingest, is_image_name, unfinished_extractions
from .lists import BENCHMARK_LISTS, LIST_DIR_OF, write_imglists
from .mvtec import prepare_mvtec
from .report import PrepareReport


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
    if benchmark == "imagenet30":  # read in place from the extracted ss-ood archives (datasets/anomaly/imagenet30.py)
        raise DataError(f"cannot prepare imagenet30: {IMAGENET30_WHERE}; the imagenet30 benchmark reads the extracted folders "
                        f"directly (nothing to prepare)")
    if benchmark == "mvtec":  # not downloadable; its own layout and lists (prepare/mvtec.py)
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
    wanted = (benchmark, frozenset(s for spec in BENCHMARK_LISTS[benchmark] for s in spec.sets))
    for src in sources:
        counts = ingest(Path(src), root, LIST_DIR_OF.get(benchmark, benchmark), limit=limit, wanted=wanted)
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
