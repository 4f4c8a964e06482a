"""``Evaluator``: a benchmark's OOD table for any classifier, from a notebook, without a config file.

::

    from openood_ext import Evaluator
    ev = Evaluator(net, benchmark="cifar10", postprocessors=["msp", "ebo", {"name": "knn", "k": 50}])
    df = ev.eval_ood()             # one row per (postprocessor, OOD set / group), OpenOOD's columns, in %
    ev.scores["knn"]["mnist"]      # numpy float64 [N], higher = more in-distribution
    ev.save("results/my_model")    # metrics.csv, metrics.json, scores/*.npz, report.html, run.json

It runs the same parts as ``openood-ext --config ... pipeline=test_ood``: the benchmark's loaders, one
forward pass per split (:func:`openood_ext.features.extract_outputs`), the postprocessor scheduler, the
``ood`` evaluator and the results writer, so the numbers equal the command line's for the same weights.
The network is any ``nn.Module`` mapping images to logits (:mod:`openood_ext.api.model`). Nothing is
written to disk except by ``save`` and the optional output cache (``cache_dir``, keyed by the weights'
content, so a changed model is never served stale outputs; the benchmark's small images are kept decoded
there too, under ``decoded/``, else decoded in memory: :mod:`openood_ext.datasets.eval_batches`); preparing the embedded ``digits`` benchmark
generates its images under ``data_root`` as the command line does.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import __version__
from ..datasets import Benchmark
from ..datasets.cli import load_benchmark
from ..datasets.data_settings import DataSettings
from ..datasets.eval_batches import eval_loader
from ..datasets.imglist import SkipCounter, read_imglist
from ..errors import ConfigError
from ..evaluators import EVALUATORS
from ..features import EmptySplit, FeatureCache, NetOutputs, cache_key, extract_outputs, file_sha256
from ..pipelines import aps as aps_search
from ..pipelines.results import save_scores, write_metrics
from ..pipelines.test_ood import check_fsood
from ..postprocessors import POSTPROCESSORS
from ..postprocessors.base import as_postprocessor
from ..postprocessors.schedule import Scheduler, fit_alone, fit_and_score, route
from ..reports import write_report
from ..utils.io import write_json
from ..utils.runtime import get_logger, resolve_device
from .model import ModelAdapter, adapt, probe, weights_hash

#: the DataFrame's columns (OpenOOD v1.5's) and the metric each is made of, in percent
COLUMNS = {"FPR@95": "fpr95", "AUROC": "auroc", "AUPR_IN": "aupr_in", "AUPR_OUT": "aupr_out"}
GROUP_ROWS = {"near": "nearood", "far": "farood"}


@contextmanager
def quiet(enabled: bool):
    """Silence the toolkit's progress and info lines while ``enabled``."""
    if not enabled:
        yield
        return
    log = get_logger()
    level, bars = log.level, os.environ.get("TQDM_DISABLE")
    log.setLevel(logging.WARNING)
    os.environ["TQDM_DISABLE"] = "1"  # the terminal's progress bars (tqdm reads it)
    try:
        yield
    finally:
        log.setLevel(level)
        if bars is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = bars


def build_transform_from(preprocess: Any, net: nn.Module):
    """A PIL-image -> tensor transform from ``preprocess``: a callable as is, ``"timm"`` for a timm model's
    own data config; None (the benchmark's) and dicts are handled by the caller."""
    if callable(preprocess):
        return preprocess
    if preprocess == "timm":
        try:
            from timm.data import create_transform, resolve_data_config
        except ImportError as exc:
            raise ConfigError("preprocess='timm' needs timm installed (pip install timm)") from exc
        return create_transform(**resolve_data_config({}, model=net))
    raise ConfigError(f"preprocess: expected None (the benchmark's), a dict of benchmark.preprocessor keys, "
                      f"'timm' or a callable transform, got {preprocess!r}")


class BenchmarkSource:
    """The scheduler's source over a benchmark and an adapted network: each split's outputs computed once
    (in memory; on disk too under ``cache_dir``), loaders with the chosen preprocessing."""

    def __init__(self, net: ModelAdapter, bench: Benchmark, device: torch.device, batch_size: int,
                 num_workers: int = 0, transform: Callable | None = None, cache_dir: str | Path | None = None):
        self.net, self.bench, self.device = net, bench, device
        self.batch_size, self.workers, self.transform = int(batch_size), int(num_workers), transform
        self.memo: dict[str, NetOutputs] = {}
        self.cache = FeatureCache(cache_dir)
        # the benchmark's own preprocessing: splits of small images come from the decoded-image cache in
        # whole batches (the same tensors; written under cache_dir/decoded, else decoded in memory)
        self.data = DataSettings(cache_dir=str(Path(cache_dir) / "decoded") if cache_dir else None)
        self._decoded: dict[str, object] = {}
        self.forward_passes = 0
        self._base_key = None

    def base_key(self) -> dict:
        if self._base_key is None:  # hashing the weights costs a pass over them: only with a cache
            self._base_key = {"weights": weights_hash(self.net), "features": self.net.describe(),
                              "output_key": repr(self.net.output_key), **self.bench.preprocessing_key(),
                              "transform": repr(self.transform)}
        return self._base_key

    def loader_for(self, split_name: str):
        split = self.bench.split(split_name)
        if self.transform is None:
            if split_name not in self._decoded:
                self._decoded[split_name] = eval_loader(self.bench, split, self.data, self.batch_size, self.device)
            if self._decoded[split_name] is not None:
                return self._decoded[split_name]
            return self.bench.loader(split, batch_size=self.batch_size, num_workers=self.workers)
        dataset = self.bench.dataset(split)
        dataset.transform, dataset.mode = self.transform, "RGB"
        return torch.utils.data.DataLoader(dataset, batch_size=self.batch_size, shuffle=False,
                                           num_workers=self.workers, collate_fn=SkipCounter())

    def outputs(self, split_name: str, consumers=()) -> NetOutputs:
        if consumers:
            self.memo[split_name] = self._forward(split_name, consumers)
            return self.memo[split_name]
        if split_name not in self.memo:
            if self.cache.root is None:
                self.memo[split_name] = self._forward(split_name)
            else:
                split = self.bench.split(split_name)
                key = cache_key(**self.base_key(), imglist=file_sha256(split.imglist))
                self.memo[split_name] = self.cache.get_or_compute(key, lambda: self._forward(split_name),
                                                                  len(read_imglist(split.imglist)))
        return self.memo[split_name]

    def _forward(self, split_name: str, consumers=()) -> NetOutputs:
        self.forward_passes += 1
        return extract_outputs(self.net, self.loader_for(split_name), self.device, desc=f"forward {split_name}",
                               consumers=consumers)

    def example(self, split_name: str) -> torch.Tensor:
        for batch in self.loader_for(split_name):
            if len(batch[0]):
                return batch[0][:2].to(self.device)
        raise EmptySplit(f"{split_name}: no readable image to probe the network's layers with")


def label_of(spec) -> str:
    return spec if isinstance(spec, str) else spec.get("label") or spec["name"]


class Evaluator:
    """OOD evaluation of any classifier on a registered benchmark (see the module docstring).

    Args:
        net: an ``nn.Module`` mapping images to logits (this toolkit's networks, torchvision, timm, your own).
        benchmark: a benchmark name (``configs/benchmarks/<name>.yml``: digits, cifar10, cifar100,
            imagenet200, imagenet, ...), a path to such a file, or a built :class:`Benchmark`.
        postprocessors: names or ``{"name": ..., **arguments}`` entries (``label`` renames one, ``aps``
            per entry), as in a config's ``postprocessors:`` list.
        data_root: the data directory (default: ``$OPENOOD_EXT_DATA`` or ``data``).
        preprocess: None (the benchmark's preprocessing), a dict of ``benchmark.preprocessor`` keys
            overriding it (e.g. ``{"image_size": 224, "channels": 3, ...}``), ``"timm"`` (the timm model's
            data config) or any callable PIL image -> tensor (a torchvision transform).
        batch_size, num_workers: of the loaders.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda:1``, ...; the network is moved there.
        aps: search each postprocessor's ``aps_grid`` on ID-val vs OOD-val (entries may say ``aps`` themselves).
        feature_layer, output_key: see :class:`~openood_ext.api.model.ModelAdapter`.
        cache_dir: cache each split's outputs on disk there, keyed by the weights' content (default: none).
        verbose: False silences the progress lines.
    """

    def __init__(self, net: nn.Module, benchmark: str | Benchmark = "cifar10",
                 postprocessors: Sequence[str | Mapping[str, Any]] | str = ("msp",), data_root: str | Path | None = None,
                 preprocess: Any = None, batch_size: int = 256, device: str | torch.device = "auto",
                 aps: bool = False, *, feature_layer: str | None = None, output_key: str | int | None = None,
                 cache_dir: str | Path | None = None, num_workers: int = 0, verbose: bool = True):
        self.device = resolve_device(str(device))
        self.verbose = verbose
        specs = [postprocessors] if isinstance(postprocessors, (str, Mapping)) else list(postprocessors)
        if not specs:
            raise ConfigError("postprocessors: list at least one postprocessor (e.g. ['msp', 'ebo'])")
        self.plans = []  # (label, build spec, APS?, inline grid); built once now so that typos fail fast
        for s in specs:
            spec, use_aps, grid = aps_search.split_spec(dict(s) if isinstance(s, Mapping) else s, aps)
            as_postprocessor(POSTPROCESSORS.build(spec))
            point = aps_search.single_point(spec, grid) if use_aps else None
            if point is not None:
                spec, use_aps = {**spec, **point}, False
            self.plans.append((label_of(s), spec, use_aps, grid))
        labels = [p[0] for p in self.plans]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"postprocessors: labels {labels} repeat; give one entry a 'label'")
        if isinstance(benchmark, Benchmark):
            self.bench = benchmark
        else:
            self.bench = load_benchmark(str(benchmark), Path(data_root) if data_root is not None else None)
        if isinstance(preprocess, Mapping):
            self.bench.preprocessor.update(dict(preprocess))
            transform = None
        else:
            transform = None if preprocess is None else build_transform_from(preprocess, net)
        self.bench.prepare()  # a named benchmark that is not there: one line with the prepare command
        self.net = adapt(net, feature_layer, output_key).to(self.device)
        self.source = BenchmarkSource(self.net, self.bench, self.device, batch_size, num_workers, transform,
                                      cache_dir)
        self.scores: dict[str, dict[str, np.ndarray]] = {}
        self.metrics: pd.DataFrame | None = None
        self._rows: list[dict] = []
        self._summary: dict = {}
        self._scored: dict = {}

    # ------------------------------------------------------------------ evaluation
    def eval_ood(self, fsood: bool = False) -> pd.DataFrame:
        """Fit and score every postprocessor, evaluate every available OOD set; the table (see :meth:`table`).

        ``fsood=True``: OpenOOD v1.5's full-spectrum setting. The benchmark's covariate-shifted ID sets
        (``csid``: CIFAR-10-C, ImageNet-V2/-C/-R, ...) that are present are scored too; the ID side of every
        OOD metric is the ID test set plus all of them (confidences concatenated), and ACC is the accuracy
        over that pool, as OpenOOD's ``eval_ood(fsood=True)``. Absent csid sets are skipped and listed
        (``summary["skipped_sets"]``), where OpenOOD would fail on them. Deviation: OpenOOD scores
        ImageNet-C with a preprocessor without resize and crop (its images are stored at 224 px); here
        every split uses the benchmark's preprocessing, which leaves 224 px images unchanged up to the
        resize-to-256-then-crop round trip."""
        with quiet(not self.verbose):
            return self._eval(fsood)

    def _eval(self, fsood: bool = False) -> pd.DataFrame:
        bench, log = self.bench, get_logger()
        with torch.no_grad():
            probe(self.net, self.source.example("id_test"), bench.num_classes, f"benchmark {bench.name}")
        ood_sets, csid_sets, skipped = [], [], {}
        for split in bench.splits(("near", "far", "csid") if fsood else ("near", "far")):
            reason = bench.missing_reason(split)
            if reason:
                log.warning("skipping %s set %s (%s): %s", "csid" if split.group == "csid" else "OOD", split.name,
                            split.group, reason)
                skipped[split.name] = (split.group, reason)
            else:
                (csid_sets if split.group == "csid" else ood_sets).append(split)
        if fsood:
            check_fsood(bench, csid_sets, log)
        built = {label: as_postprocessor(POSTPROCESSORS.build(spec)) for label, spec, use_aps, _ in self.plans
                 if not use_aps}
        self._check_routes(built)
        shared = Scheduler(built, self.source, self.net, self.device)
        test_names = ["id_test"] + [s.name for s in ood_sets + csid_sets]
        shared.prepare(test_names, optional=test_names[1:])
        for sets in (ood_sets, csid_sets):
            for s in list(sets):
                if s.name in shared.result.skipped:
                    reason = f"all {shared.result.skipped[s.name].skipped} images unreadable (on_bad_image=skip)"
                    log.warning("skipping %s set %s (%s): %s", s.group, s.name, s.group, reason)
                    skipped[s.name] = (s.group, reason)
                    sets.remove(s)
        evaluator = EVALUATORS.build("ood")
        rows, summary = [], {"benchmark": bench.name, "network": self.net.describe(), "postprocessors": {}}
        if fsood:
            summary["fsood"] = {"csid_sets": [s.name for s in csid_sets]}
        self.scores, self._scored = {}, {}
        for label, spec, use_aps, grid in self.plans:
            search = None
            if use_aps:
                search = self._search(spec, grid)
                pp = as_postprocessor(POSTPROCESSORS.build({**spec, **search["chosen"]}))
                alone = Scheduler({label: pp}, self.source, self.net, self.device, share_taps=False)
                alone.prepare(shared.splits)
                scored = alone.score(label)
            else:
                pp, scored = built[label], shared.score(label)
            result = evaluator.evaluate(label, scored["id_test"], {s.name: (s.group, scored[s.name]) for s in ood_sets},
                                        skipped, num_classes=bench.num_classes,
                                        **({"csid": {s.name: scored[s.name] for s in csid_sets}} if fsood else {}))
            rows += result.rows
            summary["postprocessors"][label] = {"hyperparameters": pp.hyperparameters(), **result.summary}
            if search:
                summary["postprocessors"][label]["aps"] = search
            self._scored[label] = {k: {"conf": v.conf, "preds": v.preds, "labels": v.labels} for k, v in scored.items()}
            self.scores[label] = {k: v.conf for k, v in scored.items()}
        summary.update({"skipped_sets": {s: {"group": g, "reason": r} for s, (g, r) in skipped.items()},
                        "skipped_images": {n: o.skipped for n, o in self.source.memo.items() if o.skipped}})
        self._rows, self._summary = rows, summary
        self.metrics = self.table()
        return self.metrics

    def _check_routes(self, built: dict) -> None:
        """One line for a method that needs the classifier's weights or the layers when the model lacks them."""
        for label, pp in built.items():
            if route(pp) == "taps" and not list(self.net.inner.named_modules())[1:]:
                raise ConfigError(f"postprocessor '{label}' reads intermediate layers, but {self.net.name} has no "
                                  f"submodules to hook")

    def _search(self, spec: dict, grid) -> dict:
        if "ood_val" not in {s.name for s in self.bench.splits()}:
            raise ConfigError(f"APS needs an OOD validation split, and benchmark '{self.bench.name}' has none")

        def scores(pp):
            conf = fit_and_score(pp, self.source, ["id_val", "ood_val"], self.net, self.device)
            return conf["id_val"], conf["ood_val"]

        loaders = {"id_val": self.source.loader_for("id_val"), "ood_val": self.source.loader_for("ood_val")}
        return aps_search.search(spec, grid, scores, fit=lambda pp: fit_alone(pp, self.source, self.net, self.device),
                                 loaders=loaders)

    def table(self) -> pd.DataFrame:
        """OpenOOD's table: index (postprocessor, dataset), each near set then ``nearood`` (their mean),
        each far set then ``farood``; columns FPR@95, AUROC, AUPR_IN, AUPR_OUT, ACC in percent (ACC is the
        ID test accuracy, over ID test + the csid sets under ``fsood``, repeated on each row as OpenOOD does). A group mean over fewer sets than the
        benchmark defines (absent sets) has ``partial`` True."""
        if not self._rows:
            raise RuntimeError("Evaluator.table: call eval_ood() first")
        frame = pd.DataFrame(self._rows)
        lines, index = [], []
        for pp, rows in frame.groupby("postprocessor", sort=False):
            acc = float(rows[rows.metric == "accuracy"].value.iloc[0])
            for group, mean_name in GROUP_ROWS.items():
                in_group = rows[rows.group == group]
                names = [d for d in dict.fromkeys(in_group.dataset) if d != mean_name] + [mean_name]
                for dataset in names:
                    sel = in_group[in_group.dataset == dataset]
                    if sel.empty:
                        continue
                    line = {col: 100 * float(sel[sel.metric == m].value.iloc[0]) for col, m in COLUMNS.items()}
                    line["ACC"] = 100 * acc
                    line["partial"] = bool(sel.partial.iloc[0])
                    lines.append(line)
                    index.append((pp, dataset))
        out = pd.DataFrame(lines, index=pd.MultiIndex.from_tuples(index, names=["postprocessor", "dataset"]),
                           columns=[*COLUMNS, "ACC", "partial"])
        return out

    # ------------------------------------------------------------------ files
    def save(self, directory: str | Path, report: bool = True) -> Path:
        """Write what a command-line test run writes: metrics.csv, metrics.json, scores/<pp>.npz,
        report.html (with plots) and run.json. Returns the directory."""
        if not self._rows:
            raise RuntimeError("Evaluator.save: call eval_ood() first")
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        for label, splits in self._scored.items():
            save_scores(out, label, splits)
        write_metrics(out, self._rows, self._summary)
        if report:
            counts = {n: len(self.source.memo[n]) for n in ("id_train", "id_val", "id_test") if n in self.source.memo}
            write_report(out, {"date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
                               "network": self.net.describe(),
                               "ID samples": ", ".join(f"{k} {v}" for k, v in counts.items())})
        write_json(out / "run.json", {"status": "complete", "pipeline": "test_ood", "api": "Evaluator",
                                      "benchmark": self.bench.name, "network": self.net.describe(),
                                      "postprocessors": [p[0] for p in self.plans], "openood_ext": __version__,
                                      "forward_passes": self.source.forward_passes})
        return out
