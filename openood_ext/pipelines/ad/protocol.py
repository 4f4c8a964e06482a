"""The ``ad`` pipeline (alias ``train_ad``): one-class anomaly-detection protocols over classes x seeds.

    pipeline: ad
    ad:
      classes: all            # or a list of normal classes (indices; folder names for ad_folder)
      seeds: 5                # number of seeds (seed, seed+1, ...) or an explicit list
      protocol: one_vs_rest   # or leave_one_out (train on every class but c; only c is anomalous)
      train_limit: null       # use N (seeded) training images per class x seed (quick runs)
      test_limit: null        # about N test images (a fixed, path-hashed subset shared by all cells)
      heatmaps: 6             # samples per label in the heatmap grids (0: none)
      heatmap_quantile: 0.85  # FCDD's display quantile (.85 F-MNIST/CIFAR, .97 ImageNet, .99 MVTec)
      keep_heatmaps: false    # keep every test heatmap (heatmaps.npy) in the cell directory
      note: null              # a line written to the log and metrics.json (e.g. the OE substitute)
      launcher: null          # {backend: local|submitit|ray, jobs: N}: each cell its own job (launch/ad_cells.py)

For every normal class c and seed s, in ``normal_<c>/seed_<s>/``: the network is trained by the one
training loop (:class:`~openood_ext.trainers.Engine`, its state in ``last.pt`` until the cell is done),
``checkpoint.pt``, ``scores.npz`` (``scores`` higher = more anomalous, ``is_anomaly`` 1 = anomalous,
``paths``), ``roc.png``, heatmap grids and ``result.json`` (the marker of a finished cell). A killed run
restarted with ``resume=true`` skips finished cells and continues the first unfinished one from its
``last.pt``. The run's ``metrics.json`` is the ``ad_ovr`` evaluator's aggregate (mean over seeds within a
class, then over classes; std over classes and over seeds; anomalous = positive), ``metrics.csv`` one row
per class, ``plots/roc_per_class.png`` and ``report.html``.

Any trainer with a per-sample anomaly score works: it implements ``anomaly_scores(images) -> (scores [B],
heatmaps [B, H, W] or None)`` (higher = more anomalous); without it, a network with ``heat(x)`` (FCDD
nets) is used. With ground-truth masks (``ad_folder`` benchmarks with ``anomalous_gt/``), the upsampled
heatmaps go through the ``pixel`` evaluator (pixel AUROC pooled over the class's test pixels).
"""

from __future__ import annotations

import dataclasses
import html
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torchvision.transforms as T
from omegaconf import DictConfig
from PIL import Image

from ... import distributed
from ...config import to_plain
from ...datasets import BENCHMARKS
from ...datasets.imglist import read_imglist
from ...errors import ConfigError, DataError
from ...evaluators.ad_ovr import ADRecord, OneVsRestEvaluator
from ...evaluators.metrics import auroc
from ...evaluators.pixel import PixelEvaluator
from ...launch import launcher_options
from .jobs import run_cells_as_jobs
from ...networks import NETWORKS
from ...networks.checkpoint import save_checkpoint
from ...reports.plots import ad_class_roc_plot
from ...synthesizers.pixels import PixelSpace
from ...trainers import Engine, plan_training
from ...trainers.data import build_train_loader
from ...trainers.history import write_history
from ...utils.io import write_json, write_text
from ...utils.runtime import resolve_device, seed_everything
from .data import adapt_benchmark, check_preprocessor, outlier_record, subset_key
from .infer import scorer_of, scoring_meta
from .heatmaps import save_heatmap_grids
from ..context import RunContext
from ..registry import PIPELINES

PROTOCOLS = ("one_vs_rest", "leave_one_out")


@dataclass
class ADSettings:
    """The validated ``ad:`` section."""

    classes: list
    seeds: list[int]
    protocol: str = "one_vs_rest"
    train_limit: int | None = None
    test_limit: int | None = None
    heatmaps: int = 6
    heatmap_quantile: float = 0.85
    keep_heatmaps: bool = False
    note: str | None = None
    all_classes: list = field(default_factory=list)
    launcher: dict | None = None

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "ADSettings":
        spec = to_plain(cfg.get("ad")) or {}
        if not isinstance(spec, dict):
            raise ConfigError(f"config key 'ad': expected a mapping, got {spec!r}")
        known = {f.name for f in dataclasses.fields(cls)} - {"all_classes"}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ConfigError(f"ad: unknown key(s) {unknown} (known: {', '.join(sorted(known))})")
        if "benchmark" not in cfg:
            raise ConfigError("config has no 'benchmark' section (e.g. configs/benchmarks/fmnist.yml)")
        bench_spec = to_plain(cfg.benchmark)
        all_classes = benchmark_classes(bench_spec)
        protocol = spec.get("protocol", "one_vs_rest")
        if protocol not in PROTOCOLS:
            raise ConfigError(f"ad.protocol: expected one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        classes = spec.get("classes", "all")
        if classes == "all" or classes is None:
            classes = list(all_classes)
        elif not isinstance(classes, list):
            classes = [classes]
        for c in classes:
            if c not in all_classes:
                raise ConfigError(f"ad.classes: {c!r} is not a class of benchmark {bench_spec.get('name')} "
                                  f"(classes: {', '.join(map(str, all_classes))})")
        if len(set(map(str, classes))) != len(classes):
            raise ConfigError(f"ad.classes: a class is listed twice in {classes}")
        seeds = spec.get("seeds", 1)
        base = int(cfg.get("seed", 0))
        if isinstance(seeds, bool) or not isinstance(seeds, (int, list)):
            raise ConfigError(f"ad.seeds: expected a number of seeds >= 1 or a list of seeds, got {seeds!r}")
        if isinstance(seeds, int):
            if seeds < 1:
                raise ConfigError(f"ad.seeds: expected a number of seeds >= 1, got {seeds}")
            seeds = [base + i for i in range(seeds)]
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds) \
                or len(set(seeds)) != len(seeds):
            raise ConfigError(f"ad.seeds: expected distinct non-negative integer seeds, got {seeds!r}")
        if protocol == "leave_one_out" and len(all_classes) < 2:
            raise ConfigError("ad.protocol leave_one_out needs a benchmark with at least two classes")
        if protocol == "leave_one_out" and bench_spec.get("name") in ("ad_folder", "mvtec"):
            raise ConfigError(f"ad.protocol: leave_one_out is not defined for {bench_spec.get('name')} benchmarks "
                              f"(use one_vs_rest)")
        for key in ("train_limit", "test_limit"):
            v = spec.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"ad.{key}: expected an integer >= 1 or null, got {v!r}")
        n_heat = spec.get("heatmaps", 6)
        if isinstance(n_heat, bool) or not isinstance(n_heat, int) or n_heat < 0:
            raise ConfigError(f"ad.heatmaps: expected an integer >= 0, got {n_heat!r}")
        q = spec.get("heatmap_quantile", 0.85)
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 1:
            raise ConfigError(f"ad.heatmap_quantile: expected a number in (0, 1], got {q!r}")
        return cls(classes, seeds, protocol, spec.get("train_limit"), spec.get("test_limit"), n_heat, float(q),
                   bool(spec.get("keep_heatmaps", False)), spec.get("note"), list(all_classes),
                   launcher_options(spec.get("launcher"), "ad.launcher"))


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
    """The benchmark of normal class ``cls`` (one_vs_rest) or of every class but ``cls`` (leave_one_out)."""
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


def collect_test_set(bench, test_limit: int | None) -> tuple[list, list[str], np.ndarray]:
    """(datasets with their kept indices, paths, is_anomaly) of the test set: normal ``id_test`` + ``anomalies``."""
    parts, paths, labels = [], [], []
    splits = [(bench.split("id_test"), 0), (bench.split("anomalies"), 1)]
    total = sum(len(read_imglist(s.imglist)) for s, _ in splits)
    frac = 1.0 if not test_limit else min(1.0, test_limit / max(total, 1))
    for split, lab in splits:
        ds = bench.dataset(split, train=False)
        idx = [i for i, e in enumerate(ds.entries) if frac >= 1 or keep_fraction(e.path, frac)]
        if not idx:
            raise DataError(f"benchmark {bench.name}: ad.test_limit={test_limit} leaves split '{split.name}' empty")
        parts.append((ds, idx))
        paths += [ds.entries[i].path for i in idx]
        labels += [lab] * len(idx)
    return parts, paths, np.asarray(labels, np.int64)


def mask_transform(pre: dict):
    size = int(pre.get("image_size", 32))
    return T.Compose([T.Resize(int(pre.get("resize", size)), interpolation=T.InterpolationMode.NEAREST),
                      T.CenterCrop(size)])


def score_test_set(bench, scorer, settings: ADSettings, cell: Path, device, batch_size: int, log):
    """Score every test image; heatmaps go to ``cell/heatmaps.npy`` (memory-mapped), masks to
    ``cell/masks.npy`` when the benchmark has them. Returns (scores, is_anomaly, paths, heat, masks)."""
    parts, paths, labels = collect_test_set(bench, settings.test_limit)
    n = len(paths)
    scores = np.zeros(n, np.float64)
    heat = masks = None
    has_masks = bool(getattr(bench, "has_masks", False))
    mtf = mask_transform(bench.preprocessor) if has_masks else None
    pos = 0
    for ds, idx in parts:
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, idx), batch_size=batch_size,
                                             collate_fn=lambda b: (torch.stack([x[0] for x in b]),))
        for (images,) in loader:
            s, h = scorer(images.to(device))
            b = len(images)
            scores[pos:pos + b] = s.detach().double().cpu().numpy()
            if h is not None:
                if heat is None:
                    heat = np.lib.format.open_memmap(cell / "heatmaps.npy", "w+", np.float32, (n, *h.shape[-2:]))
                    if has_masks:
                        masks = np.lib.format.open_memmap(cell / "masks.npy", "w+", np.uint8, (n, *h.shape[-2:]))
                heat[pos:pos + b] = h.detach().float().cpu().numpy()
                if masks is not None:
                    for k in range(b):
                        raw = bench.load_mask(paths[pos + k], bool(labels[pos + k]))
                        m = np.asarray(mtf(Image.fromarray(raw * 255)))
                        if m.shape != heat.shape[1:]:
                            raise DataError(f"mask of {paths[pos + k]}: {m.shape} after resizing, heatmaps are {heat.shape[1:]}")
                        masks[pos + k] = m > 0
            pos += b
    if not np.isfinite(scores).all():
        raise DataError(f"{cell}: the anomaly scores contain NaN/Inf (did training diverge?)")
    return scores, labels, paths, heat, masks


def load_test_images(bench, paths: list[str], rows: np.ndarray) -> np.ndarray:
    """Test images ``rows`` in [0, 1] ([k, C, H, W]) for the heatmap grids."""
    pixels = PixelSpace(bench.preprocessor)
    tf = bench.dataset(bench.split("id_test")).transform
    mode = "L" if int(bench.preprocessor.get("channels", 3)) == 1 else "RGB"
    roots = {0: bench.image_root_of(bench.split("id_test")), 1: bench.image_root_of(bench.split("anomalies"))}
    out = []
    for r in rows:
        p = Path(paths[r])
        root = next((root for root in roots.values() if (root / p).exists()), roots[0])
        with Image.open(root / p) as img:
            out.append(tf(img.convert(mode)))
    return pixels.to_unit(torch.stack(out)).clamp(0, 1).numpy()


@PIPELINES.register("ad", aliases=["train_ad"])
class ADPipeline:
    """Train and test one network per (normal class, seed); aggregate with ``ad_ovr`` (see the module doc)."""

    trains = True

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    @staticmethod
    def check_benchmark_spec(spec: dict) -> None:
        """EOE's ``preprocessor.normalize`` / ``ms_mode`` (e.g. a filter too large), checked without data."""
        check_preprocessor(spec.get("preprocessor"))

    def run(self) -> dict:
        cfg = self.cfg
        settings = ADSettings.from_config(cfg)
        self.precheck(settings, resolve_device(cfg.get("device", "auto")))
        with RunContext(cfg) as ctx:
            metrics = self.run_protocol(ctx, settings)
            if metrics is None:  # a torchrun rank other than 0
                return {"run_dir": None, "rank": ctx.rank}
            run_dir = ctx.complete({"auroc_mean": metrics["auroc_mean"]})
        return {"run_dir": str(run_dir), "auroc_mean": metrics["auroc_mean"],
                "per_class": {str(c): v["auroc_mean"] for c, v in metrics["per_class"].items()}}

    def precheck(self, settings: ADSettings, device) -> None:
        """Data, trainer and network problems, raised before any run directory exists."""
        cfg = self.cfg
        first = cell_benchmark(cfg, settings, settings.classes[0])
        plan_training(to_plain(cfg.trainer), first, seed=settings.seeds[0], device=device,
                      num_workers=int(cfg.get("num_workers", 0)))
        net_spec = to_plain(cfg.network)
        net_spec.pop("checkpoint", None)
        NETWORKS.build(net_spec)  # e.g. a receptive field larger than the input

    def run_protocol(self, ctx, settings: ADSettings) -> dict:
        """Every class x seed cell under ``ctx.dir``, then the aggregate (metrics.json, csv, plots, report)."""
        if settings.note:
            ctx.log.info("note: %s", settings.note)
        ctx.log.info("AD protocol %s: classes %s x seeds %s", settings.protocol, settings.classes, settings.seeds)
        if settings.launcher:  # cells as separate jobs; the loop below then reads their results
            run_cells_as_jobs(self, ctx, settings)
        records, cells = [], {}
        for cls in settings.classes:
            for seed in settings.seeds:
                result, scores, labels = self.run_cell(ctx, settings, cls, seed)
                records.append(ADRecord(cls, seed, scores, labels))
                cells[(cls, seed)] = result
        if not distributed.is_main():  # torchrun: the other ranks only helped to train
            return None
        return self.aggregate(ctx, settings, records, cells)

    # ------------------------------------------------------------------ one class x seed
    def run_cell(self, ctx: RunContext, settings: ADSettings, cls, seed: int):
        cfg = self.cfg
        cell = ctx.dir / f"normal_{cls}" / f"seed_{seed}"
        done = cell / "result.json"
        if distributed.broadcast_object(done.is_file() and (cell / "scores.npz").is_file()):  # rank 0 decides
            if not distributed.is_main():
                return None, None, None
            result = json.loads(done.read_text())
            blob = np.load(cell / "scores.npz")
            ctx.log.info("class %s seed %d: already done (AUROC %.4f), skipped", cls, seed, result["auroc"])
            return result, blob["scores"], blob["is_anomaly"]
        distributed.run_on_main(lambda: cell.mkdir(parents=True, exist_ok=True))  # only rank 0 writes files
        bench = cell_benchmark(cfg, settings, cls)
        if settings.train_limit:
            subset = cell / "train_subset.txt"
            distributed.run_on_main(lambda: limit_train_split(bench, settings.train_limit, seed, subset))
            if not distributed.is_main():
                limit_train_split(bench, settings.train_limit, seed, subset, write=False)
        workers = int(cfg.get("num_workers", 0))
        plan = plan_training(to_plain(cfg.trainer), bench, seed=seed, device=ctx.device, num_workers=workers,
                             subset_key=subset_key(cls))  # an OE-limit subset drawn anew per class x seed
        seed_everything(seed)
        net_spec = to_plain(cfg.network)
        net_spec.pop("checkpoint", None)
        net = NETWORKS.build(net_spec).to(ctx.device)
        loader = build_train_loader(bench, plan.trainer, plan.settings.batch_size, seed, workers)
        if plan.source is not None:
            plan.source.ctx.steps_per_epoch = len(loader)
            plan.source.ctx.device = ctx.device
        trains = getattr(plan.trainer, "trains", True)  # False: a zero-shot scorer (EOE CLIP), set up but not trained
        ctx.log.info("class %s seed %d: training %s on %d normal images for %d epochs (trainer %s%s)", cls, seed,
                     net_spec["name"], len(loader.dataset), plan.settings.epochs if trains else 0, plan.trainer_name,
                     f"; outliers: {plan.source.describe()}" if plan.source is not None else "")
        engine = Engine(plan.trainer, net, loader, plan.settings, device=ctx.device, num_classes=bench.num_classes,
                        seed=seed, benchmark=bench, source=plan.source, state_path=cell / "last.pt", log=ctx.log)
        with ctx.timed("train"):
            history = engine.fit(resume=True) if trains else []
        if not distributed.is_main():  # torchrun: rank 0 alone saves, scores and writes the cell
            distributed.barrier()
            return None, None, None
        write_history(cell, history)
        save_checkpoint(cell / "checkpoint.pt", net, net_spec,
                        meta={"benchmark": bench.name, "normal_class": cls, "protocol": settings.protocol,
                              "seed": seed, "epochs": plan.settings.epochs, "trainer": plan.trainer_name,
                              **scoring_meta(bench, cfg, engine)})  # what `openood-ext ad-score` needs
        with ctx.timed("test"):
            scores, labels, paths, heat, masks = score_test_set(
                bench, scorer_of(plan.trainer, net), settings, cell, ctx.device, int(cfg.get("batch_size", 256)), ctx.log)
        value = auroc(scores, labels)
        result = {"class": cls, "seed": seed, "auroc": value, "n_test": int(len(labels)),
                  "n_anomalous": int(labels.sum()), "n_train": len(loader.dataset), "epochs": plan.settings.epochs if trains else 0,
                  "final_loss": history[-1]["loss"] if history else None}
        if plan.source is not None:
            result["outliers"] = outlier_record(plan.source)
        if heat is not None and masks is not None:
            result.update(PixelEvaluator().evaluate(heat, masks, method=plan.trainer_name, split=f"normal_{cls}"))
        if heat is not None and settings.heatmaps:
            save_heatmap_grids(cell, heat, scores, labels, lambda rows: load_test_images(bench, paths, rows),
                               settings.heatmaps, settings.heatmap_quantile, title=f"normal {cls}")
        ad_class_roc_plot({cls: (scores, labels)}, cell / "roc.png", title=f"normal class {cls}, seed {seed}")
        np.savez(cell / "scores.npz", scores=scores, is_anomaly=labels, paths=np.asarray(paths))
        del heat, masks
        if not settings.keep_heatmaps:
            for name in ("heatmaps.npy", "masks.npy"):
                (cell / name).unlink(missing_ok=True)
        write_json(done, result)
        (cell / "last.pt").unlink(missing_ok=True)
        ctx.log.info("class %s seed %d: AUROC %.4f%s", cls, seed, value,
                     f", pixel AUROC {result['pixel_auroc']:.4f}" if "pixel_auroc" in result else "")
        distributed.barrier()  # the other ranks wait for the finished cell
        return result, scores, labels

    # ------------------------------------------------------------------ aggregate
    def aggregate(self, ctx: RunContext, settings: ADSettings, records: list[ADRecord], cells: dict) -> dict:
        metrics = OneVsRestEvaluator(settings.protocol).evaluate(records, method=str(self.cfg.trainer.get("name")),
                                                                  dataset=str(self.cfg.benchmark.get("name")))
        rows = []
        for cls, entry in metrics["per_class"].items():
            pix = [cells[(cls, s)]["pixel_auroc"] for s in entry["seeds"] if "pixel_auroc" in cells[(cls, s)]]
            if pix:
                entry["pixel_auroc_mean"] = float(np.mean(pix))
            rows.append({"class": cls, "auroc_mean": entry["auroc_mean"], "auroc_std": entry["auroc_std"],
                         "n_seeds": len(entry["seeds"]), "aurocs": " ".join(f"{a:.4f}" for a in entry["aurocs"]),
                         **({"pixel_auroc_mean": entry["pixel_auroc_mean"]} if pix else {})})
        pix_all = [e["pixel_auroc_mean"] for e in metrics["per_class"].values() if "pixel_auroc_mean" in e]
        if pix_all:
            metrics["pixel_auroc_mean"] = float(np.mean(pix_all))
        rows.append({"class": "mean", "auroc_mean": metrics["auroc_mean"], "auroc_std": metrics["auroc_std_over_classes"],
                     "n_seeds": len(settings.seeds), "aurocs": "",
                     **({"pixel_auroc_mean": metrics["pixel_auroc_mean"]} if pix_all else {})})
        metrics.update({"protocol": settings.protocol, "classes": settings.classes, "seeds": settings.seeds,
                        "benchmark": str(self.cfg.benchmark.get("name")), "trainer": str(self.cfg.trainer.get("name")),
                        "note": settings.note, "train_limit": settings.train_limit, "test_limit": settings.test_limit})
        metrics["per_class"] = {str(k): v for k, v in metrics["per_class"].items()}
        metrics["per_seed"] = {str(k): v for k, v in metrics.get("per_seed", {}).items()}
        write_json(ctx.dir / "metrics.json", metrics)
        frame = pd.DataFrame(rows)
        write_text(ctx.dir / "metrics.csv", frame.to_csv(index=False))
        first = {r.cls: (r.scores, r.is_anomaly) for r in records if r.seed == settings.seeds[0]}
        ad_class_roc_plot(first, ctx.dir / "plots" / "roc_per_class.png",
                          title=f"{settings.protocol}: ROC per class (seed {settings.seeds[0]})")
        write_ad_report(ctx.dir, frame, settings)
        ctx.log.info("AD %s: mean AUROC %.4f (std over classes %.4f) over %d classes x %d seeds", settings.protocol,
                     metrics["auroc_mean"], metrics["auroc_std_over_classes"], len(settings.classes), len(settings.seeds))
        return metrics


def write_ad_report(run_dir: Path, frame: pd.DataFrame, settings: ADSettings) -> Path:
    """``report.html``: the per-class table, the ROC figure and the first seed's heatmap grids."""
    imgs = ["<h2>ROC per class</h2><img src='plots/roc_per_class.png' style='max-width:520px'>"]
    for cls in settings.classes:
        grid = Path(f"normal_{cls}") / f"seed_{settings.seeds[0]}" / "heatmaps_paper_global_lbl1.png"
        if (run_dir / grid).is_file():
            imgs.append(f"<h3>normal {html.escape(str(cls))}: anomalous test samples</h3><img src='{grid}' style='max-width:520px'>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>AD report</title></head><body>"
            f"<h1>{html.escape(run_dir.name.removesuffix('.partial'))}</h1>"
            f"<p>protocol {settings.protocol}; anomalous = positive; AUROC as fractions"
            f"{'; ' + html.escape(settings.note) if settings.note else ''}</p>"
            + frame.to_html(index=False, border=0, float_format=lambda v: f"{v:.4f}") + "".join(imgs) + "</body></html>\n")
    out = run_dir / "report.html"
    write_text(out, page)
    return out
