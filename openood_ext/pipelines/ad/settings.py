"""The ``ad:`` section (:class:`ADSettings`) and the per-cell data helpers every AD pipeline shares.

A cell is one (normal class, seed) of the protocol; :func:`cell_benchmark` builds its benchmark,
:func:`limit_train_split` draws its training subset and :func:`collect_test_set` its test images (the same
path-hashed subset in every cell and every run, so cells of one run are scored on comparable sets).
"""

from __future__ import annotations

import dataclasses
import typing
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from omegaconf import DictConfig

from ...config import to_plain
from ...datasets import BENCHMARKS
from ...datasets.imglist import read_imglist
from ...errors import ConfigError, DataError
from ...launch import launcher_options
from ...schema import NonNegativeInt, PositiveInt, Range, check_section
from ...utils.io import write_text
from .data import adapt_benchmark

Protocol = Literal["one_vs_rest", "leave_one_out"]
#: the test splits of an AD cell, in the order they are scored: normal images (label 0), anomalies (1)
TEST_SPLITS = ("id_test", "anomalies")
PROTOCOLS = typing.get_args(Protocol)


@dataclass
class ADSettings:
    """The ``ad:`` section. The fields are the section's keys, typed so that
    ``openood_ext.schema.check_section("ad", ADSettings, section)`` rejects a wrong type or range without
    data; :meth:`from_config` adds what needs the benchmark (which classes exist) and returns the resolved
    settings: ``classes`` a list of classes, ``seeds`` a list of seeds, ``launcher`` the checked options.
    """

    classes: list[int | str] | int | str | None = "all"  # "all"/null: every class; a single class: [it]
    seeds: PositiveInt | list[NonNegativeInt] = 1  # N: seed, seed+1, ..., seed+N-1 (top-level ``seed``)
    protocol: Protocol = "one_vs_rest"
    train_limit: PositiveInt | None = None
    test_limit: PositiveInt | None = None
    heatmaps: NonNegativeInt = 6
    heatmap_quantile: Annotated[float, Range(0, 1, open_low=True)] = 0.85
    keep_heatmaps: bool = False
    note: str | None = None
    launcher: dict | None = None
    # resolved, not a key: every normal-class candidate of the benchmark (leave_one_out trains on the others)
    all_classes: list = field(default_factory=list, init=False)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> ADSettings:
        """The resolved settings of ``cfg.ad``; ConfigError (one line, naming ``ad.<key>``) otherwise."""
        spec = to_plain(cfg.get("ad")) or {}
        if not isinstance(spec, dict):
            raise ConfigError(f"config key 'ad': expected a mapping, got {spec!r}")
        check_section("ad", cls, spec)  # unknown keys, types and ranges, from the fields above
        if "benchmark" not in cfg:
            raise ConfigError("config has no 'benchmark' section (e.g. configs/benchmarks/fmnist.yml)")
        s = cls(**spec)
        bench_spec = to_plain(cfg.benchmark)
        s.all_classes = benchmark_classes(bench_spec)
        if s.classes == "all" or s.classes is None:
            s.classes = list(s.all_classes)
        elif not isinstance(s.classes, list):
            s.classes = [s.classes]
        if not s.classes:
            raise ConfigError(f"ad.classes: empty list; give the normal classes to run, or 'all' "
                              f"(classes: {', '.join(map(str, s.all_classes))})")
        for c in s.classes:
            if c not in s.all_classes:
                raise ConfigError(f"ad.classes: {c!r} is not a class of benchmark {bench_spec.get('name')} "
                                  f"(classes: {', '.join(map(str, s.all_classes))})")
        if len(set(map(str, s.classes))) != len(s.classes):
            raise ConfigError(f"ad.classes: a class is listed twice in {s.classes}")
        if isinstance(s.seeds, int):
            base = int(cfg.get("seed", 0))
            s.seeds = [base + i for i in range(s.seeds)]
        if not s.seeds or len(set(s.seeds)) != len(s.seeds):
            raise ConfigError(f"ad.seeds: expected distinct non-negative integer seeds, got {s.seeds!r}")
        if s.protocol == "leave_one_out" and len(s.all_classes) < 2:
            raise ConfigError("ad.protocol leave_one_out needs a benchmark with at least two classes")
        if s.protocol == "leave_one_out" and bench_spec.get("name") in ("ad_folder", "mvtec"):
            raise ConfigError(f"ad.protocol: leave_one_out is not defined for {bench_spec.get('name')} benchmarks "
                              f"(use one_vs_rest)")
        s.heatmap_quantile = float(s.heatmap_quantile)
        s.launcher = launcher_options(s.launcher, "ad.launcher")
        return s


def benchmark_classes(bench_spec: dict) -> list:
    """Normal-class candidates: ``ad_classes(spec)`` of the benchmark class, else 0..num_classes-1."""
    bench_cls = BENCHMARKS.get(bench_spec.get("name", "imglist"))
    if hasattr(bench_cls, "ad_classes"):
        return list(bench_cls.ad_classes(bench_spec))
    n = bench_spec.get("num_classes")
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"benchmark.num_classes: the AD pipeline needs the number of classes of the full set, got {n!r}")
    return list(range(n))


def cell_benchmark(cfg: DictConfig, settings: ADSettings, cls) -> Any:
    """The prepared benchmark of normal class ``cls`` (one_vs_rest) or of every class but ``cls``
    (leave_one_out), adapted to the cell (:func:`~.data.adapt_benchmark`); DataError without anomalies."""
    spec = to_plain(cfg.benchmark)
    if settings.protocol == "one_vs_rest":
        spec["normal_class"] = cls
    else:
        spec["normal_class"] = [c for c in settings.all_classes if c != cls]
    bench = BENCHMARKS.build(spec)
    bench.prepare()
    adapt_benchmark(bench)  # preprocessor.normalize: normal_class, preprocessor.ms_mode (EOE)
    try:
        bench.split("anomalies")
    except ConfigError:
        raise DataError(f"benchmark {bench.name}: no test anomalies (an AD benchmark needs an 'anomalies' split)") from None
    return bench


def limit_train_split(bench, n: int, seed: int, out: Path, write: bool = True) -> None:
    """Replace the benchmark's ``id_train`` split by ``n`` of its images (seeded), listed in ``out``
    (``write=False``: ``out`` was written by another process, e.g. torchrun's rank 0)."""
    split = bench.split("id_train")
    entries = read_imglist(split.imglist)
    if n < len(entries):
        if write:
            keep = np.sort(np.random.default_rng([seed, 0xAD]).choice(len(entries), n, replace=False))
            write_text(out, "".join(f"{entries[i].path} {entries[i].label}\n" for i in keep))
        new = dataclasses.replace(split, imglist=out, image_root=bench.image_root_of(split))
        bench._splits = [new if s.name == "id_train" else s for s in bench._splits]


def keep_fraction(path: str, fraction: float) -> bool:
    """A stable, path-hashed subset: the same images are kept in every cell and every run."""
    return zlib.crc32(path.encode()) / 2**32 < fraction


def test_fraction(bench, test_limit: int | None) -> float:
    """The path-hashed fraction of the test set that ``ad.test_limit`` keeps (1: all of it)."""
    total = sum(len(read_imglist(bench.split(name).imglist)) for name in ("id_test", "anomalies"))
    return 1.0 if not test_limit else min(1.0, test_limit / max(total, 1))


def kept_test_indices(entries, frac: float) -> list[int]:
    return [i for i, e in enumerate(entries) if frac >= 1 or keep_fraction(e.path, frac)]


def check_cell_data(bench, settings: ADSettings, cls) -> None:
    """What a cell of class ``cls`` reads, checked without training: training images, normal test images and
    anomalies present, ``ad.test_limit`` leaving every test split non-empty, and every kept anomaly's
    ground-truth mask present and of its image's size (benchmarks with masks). DataError naming the class."""
    where = f"ad.classes: class {cls!r} of benchmark {bench.name}"
    for name, what in (("id_train", "training images"), ("id_test", "normal test images"), ("anomalies", "test anomalies")):
        if not read_imglist(bench.split(name).imglist):
            raise DataError(f"{where}: no {what} ({bench.split(name).imglist} is empty)")
    frac = test_fraction(bench, settings.test_limit)
    for name in ("id_test", "anomalies"):
        entries = read_imglist(bench.split(name).imglist)
        kept = kept_test_indices(entries, frac)
        if not kept:
            raise DataError(f"{where}: ad.test_limit={settings.test_limit} leaves split '{name}' empty "
                            f"(of {len(entries)} images; raise the limit)")
        if name == "anomalies" and getattr(bench, "has_masks", False):
            for i in kept:
                bench.load_mask(entries[i].path, True)  # DataError: missing, or another size than its image


def collect_test_set(bench, test_limit: int | None) -> tuple[list, list[str], np.ndarray]:
    """(datasets with their kept indices, paths, is_anomaly) of the test set: normal ``id_test`` + ``anomalies``."""
    parts, paths, labels = [], [], []
    splits = [(bench.split(name), lab) for lab, name in enumerate(TEST_SPLITS)]
    frac = test_fraction(bench, test_limit)
    for split, lab in splits:
        ds = bench.dataset(split, train=False)
        idx = kept_test_indices(ds.entries, frac)
        if not idx:
            raise DataError(f"benchmark {bench.name}: ad.test_limit={test_limit} leaves split '{split.name}' empty")
        parts.append((ds, idx))
        paths += [ds.entries[i].path for i in idx]
        labels += [lab] * len(idx)
    return parts, paths, np.asarray(labels, np.int64)
