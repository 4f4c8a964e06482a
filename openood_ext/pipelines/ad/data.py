"""Per-cell data settings of the AD pipelines that EOE (Liznerski et al., TMLR 2022) needs.

Both are keys of ``benchmark.preprocessor`` and act on the benchmark of one (normal class, seed) cell:

* ``normalize: normal_class`` -- the per-channel mean/std of the cell's *normal training images*
  (resized/cropped, no augmentation, pixel values in [0, 1]) replace ``mean``/``std``. Every dataset of
  the cell is then normalised with them: the normal training images, the test images and -- because
  image outlier sources read ``benchmark.preprocessor`` -- the OE images (EOE's ``'normalize'``, whose
  statistics are cached in ``stats_cache.json``). EOE accumulates them with a running approximation
  (``RunningStats`` over batches of 2); here they are exact (float64 sums over all pixels). The cache is
  ``stats_cache.json`` next to the cell's training image list. ``normalize: fixed`` (default) keeps the
  configured constants.
* ``normalize: gcn_min_max`` -- EOE's ``'gcn-normalize'`` (its MVTec-AD runner): every image gets a global
  contrast normalisation (``preprocessor.gcn: l1``, train and test, OE images included), then Normalize
  with mean = the smallest value and std = the range of the GCN'd normal training images (resized to
  ``resize``, not cropped, no augmentation, as EOE's raw training set), one number for every channel.
* ``ms_mode: {mode, magnitude, parts}`` (:class:`~openood_ext.synthesizers.fourier_filter.MSMode`) --
  EOE's multiscale filters (lpf, hpf, blur, sharpen) on any of the normal training images (``train_nominal``), the OE images
  (``train_oe``; the outlier source is wrapped in ``fourier_filter``), the normal test images
  (``test_nominal``) and the anomalous test images (``test_anomalous``).

:func:`check_preprocessor` validates both keys without data (the run validation calls it);
:func:`adapt_benchmark` applies them to a built, prepared benchmark.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torchvision.transforms as T

from ...errors import ConfigError, DataError
from ...synthesizers.fourier_filter import FourierFiltered, FourierTransform, MSMode
from ...synthesizers.pixels import PixelSpace
from ...utils.io import write_text

NORMALIZE = ("fixed", "normal_class", "gcn_min_max")
#: ms_mode part -> the benchmark split it filters (train_oe is the outlier source, not a split)
PART_SPLITS = {"train_nominal": "id_train", "test_nominal": "id_test", "test_anomalous": "anomalies"}


def check_preprocessor(pre: Mapping[str, Any] | None) -> MSMode | None:
    """Validate ``normalize`` and ``ms_mode`` of ``benchmark.preprocessor``; the parsed ms_mode or None."""
    pre = pre or {}
    norm = pre.get("normalize", "fixed")
    if norm not in NORMALIZE:
        raise ConfigError(f"benchmark.preprocessor.normalize: expected one of {', '.join(NORMALIZE)}, got {norm!r}")
    ms = MSMode.from_config(pre.get("ms_mode"), int(pre.get("image_size", 32)))
    if norm == "gcn_min_max" and ms is not None and ms.magnitude:
        raise ConfigError("benchmark.preprocessor.ms_mode: the filters work in pixel units, which "
                          "normalize: gcn_min_max does not keep; use normal_class")
    return ms


def adapt_benchmark(bench) -> None:
    """Apply ``normalize: normal_class`` and ``ms_mode`` to ``bench`` (a prepared cell benchmark), in place."""
    ms = check_preprocessor(bench.preprocessor)
    if bench.preprocessor.get("normalize", "fixed") == "normal_class":
        mean, std = normal_class_stats(bench)
        bench.preprocessor = {**bench.preprocessor, "mean": mean, "std": std}
    elif bench.preprocessor.get("normalize") == "gcn_min_max":
        low, high = gcn_min_max_stats(bench)
        channels = int(bench.preprocessor.get("channels", 3))
        bench.preprocessor = {**bench.preprocessor, "gcn": "l1", "mean": [low] * channels,
                              "std": [high - low] * channels}
    if ms is None or ms.magnitude == 0:
        return
    pixels = PixelSpace(bench.preprocessor)
    filtered = {PART_SPLITS[p] for p in ms.parts if p in PART_SPLITS}
    plain_dataset = bench.dataset
    # the same filter on whole training batches when they take the tensor data path (trainers/data.py)
    bench.train_batch_ops = (FourierTransform(pixels, ms.mode, ms.magnitude),) if "id_train" in filtered else ()
    # and on whole test batches when they come from the decoded-image cache (datasets/eval_batches.py)
    bench.split_batch_ops = {name: (FourierTransform(pixels, ms.mode, ms.magnitude),) for name in filtered}

    def dataset(split, train: bool = False):
        ds = plain_dataset(split, train)
        if split.name in filtered:
            ds.transform = T.Compose([ds.transform, FourierTransform(pixels, ms.mode, ms.magnitude)])
        return ds

    bench.dataset = dataset
    if "train_oe" in ms.parts:
        bench.wrap_outlier_source = lambda source: FourierFiltered.around(source, ms.mode, ms.magnitude)


def cached_train_statistic(bench, key_fields: dict, raw_preprocessor: dict, batch_size: int, reduce) -> dict:
    """``reduce(loader)`` over ``bench``'s ``id_train`` images read with ``raw_preprocessor`` (no
    augmentation; the loader yields image batches [B, C, H, W]), cached in the image lists' folder
    (``stats_cache.json``) under the list's name, size and mtime plus ``key_fields``; a read-only data
    directory only costs the recomputation. ``reduce`` returns a JSON-serialisable dict."""
    split = bench.split("id_train")
    stat = split.imglist.stat() if split.imglist.is_file() else None
    key = json.dumps({"list": split.imglist.name, "size": stat.st_size if stat else None,
                      "mtime": stat.st_mtime_ns if stat else None, **key_fields}, sort_keys=True)
    cache = split.imglist.parent / "stats_cache.json"
    try:
        cached = json.loads(cache.read_text()) if cache.is_file() else {}
    except (OSError, ValueError):
        cached = {}
    if key in cached:
        return cached[key]
    saved = bench.preprocessor
    bench.preprocessor = raw_preprocessor
    try:
        ds = bench.dataset(split, train=False)
    finally:
        bench.preprocessor = saved
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=lambda b: torch.stack([x[0] for x in b]))
    cached[key] = reduce(loader)
    try:
        write_text(cache, json.dumps(cached, indent=1) + "\n")
    except OSError:
        pass
    return cached[key]


def gcn_min_max_stats(bench, batch_size: int = 64) -> tuple[float, float]:
    """(min, max) over every value of the GCN'd (L1) normal training images, resized to ``resize`` and not
    cropped (EOE's raw training set), cached like :func:`normal_class_stats`."""
    from ...datasets.transforms import GlobalContrastNorm

    pre = bench.preprocessor
    channels = int(pre.get("channels", 3))
    side = int(pre.get("resize") or pre.get("image_size", 32))
    raw = {**pre, "image_size": side, "resize": side, "mean": [0.0] * channels, "std": [1.0] * channels,
           "ms_mode": None, "gcn": None}

    def reduce(loader) -> dict:
        gcn, low, high = GlobalContrastNorm(), float("inf"), float("-inf")
        for images in loader:
            x = gcn(images.double())
            low, high = min(low, float(x.min())), max(high, float(x.max()))
        if not high > low:
            raise DataError(f"benchmark {bench.name}: no normal training images (or only constant ones) to "
                            f"compute the GCN min-max normalisation from")
        return {"min": low, "max": high}

    found = cached_train_statistic(bench, {"gcn": "l1", "side": side, "interpolation": pre.get("interpolation")},
                                   raw, batch_size, reduce)
    return found["min"], found["max"]


def normal_class_stats(bench, batch_size: int = 500) -> tuple[list[float], list[float]]:
    """Exact per-channel (mean, std) of ``bench``'s ``id_train`` images in [0, 1] (no augmentation), cached."""
    pre = bench.preprocessor
    channels = int(pre.get("channels", 3))
    geometry = {k: pre.get(k) for k in ("image_size", "resize", "channels", "interpolation")}
    raw = {**pre, "mean": [0.0] * channels, "std": [1.0] * channels, "ms_mode": None}

    def reduce(loader) -> dict:
        total, sq, count = np.zeros(channels), np.zeros(channels), 0
        for images in loader:
            x = images.double().transpose(0, 1).flatten(1)  # [C, B*H*W]
            total += x.sum(1).numpy()
            sq += x.pow(2).sum(1).numpy()
            count += x.shape[1]
        if count == 0:
            raise DataError(f"benchmark {bench.name}: no normal training images to compute the normalisation from")
        mean = total / count
        std = np.sqrt(np.maximum(sq / count - mean ** 2, 0.0))
        if (std <= 0).any():
            raise DataError(f"benchmark {bench.name}: the normal training images have a constant channel "
                            f"(std {std.tolist()}); use benchmark.preprocessor.normalize: fixed")
        return {"mean": mean.tolist(), "std": std.tolist()}

    found = cached_train_statistic(bench, geometry, raw, batch_size, reduce)
    return found["mean"], found["std"]


def subset_key(cls) -> int:
    """An integer naming a normal class (index or folder name) for seeding per-class draws."""
    if isinstance(cls, int) and not isinstance(cls, bool):
        return cls
    if isinstance(cls, (list, tuple)):
        return zlib.crc32(",".join(map(str, cls)).encode())
    return zlib.crc32(str(cls).encode())


def outlier_record(source) -> dict:
    """What a cell trained against, for ``result.json``: the source's description, its limit and, for a
    limited pool, the paths of the drawn subset."""
    inner = source
    while getattr(inner, "inner", None) is not None:
        inner = inner.inner
    record = {"source": source.describe(), "limit": getattr(inner, "limit", None)}
    if getattr(inner, "classes", None) is not None:
        record["limit_classes"], record["classes"] = inner.limit_classes, list(inner.classes)
    pool, dataset = getattr(inner, "pool", None), getattr(inner, "dataset", None)
    if record["limit"] and pool is not None and dataset is not None:
        record["subset"] = [dataset.entries[int(i)].path for i in pool]
    return record
