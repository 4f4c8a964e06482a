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
      launcher: null          # {backend: local|submitit|ray, jobs: N}: each cell its own job (.jobs)

For every normal class c and seed s, in ``normal_<c>/seed_<s>/`` (:func:`.cell.run_cell`): the network is
trained by the one training loop (:class:`~openood_ext.trainers.Engine`, its state in ``last.pt`` until the cell is done),
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

import html
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from ... import distributed
from ...config import to_plain
from ...evaluators.ad_ovr import ADRecord, OneVsRestEvaluator
from ...networks import NETWORKS
from ...reports.plots import ad_class_roc_plot
from ...trainers import plan_training
from ...utils.io import write_json, write_text
from ...utils.runtime import resolve_device
from ..context import RunContext
from ..registry import PIPELINES
from .cell import ADContext, run_cell
from .data import check_preprocessor
from .jobs import run_cells_as_jobs
from .settings import (  # noqa: F401  (older import path)
    ADSettings,
    benchmark_classes,
    cell_benchmark,
    check_cell_data,
    collect_test_set,
)


class ADPipelineBase:
    """What every AD pipeline (``ad``, ``ad_sweep``, ``oe_search``) declares: it trains networks, reads the
    ``ad:`` section, and checks EOE's preprocessing keys of its benchmark. Each adds its own sections."""

    needs_trainer = True  # it trains networks: validation checks the trainer section
    config_sections = {"ad": ADSettings}

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    @staticmethod
    def check_benchmark_spec(spec: dict) -> None:
        """EOE's ``preprocessor.normalize`` / ``ms_mode`` (e.g. a filter too large), checked without data."""
        check_preprocessor(spec.get("preprocessor"))


@PIPELINES.register("ad", aliases=["train_ad"])
class ADPipeline(ADPipelineBase):
    """Train and test one network per (normal class, seed); aggregate with ``ad_ovr`` (see the module doc)."""

    def run(self) -> dict:
        cfg = self.cfg
        settings = ADSettings.from_config(cfg)
        precheck(cfg, settings, resolve_device(cfg.get("device", "auto")))
        with RunContext(cfg) as ctx:
            metrics = run_protocol(cfg, settings, ADContext.of(ctx))
            if metrics is None:  # a torchrun rank other than 0
                return {"run_dir": None, "rank": ctx.rank}
            run_dir = ctx.complete({"auroc_mean": metrics["auroc_mean"]})
        return {"run_dir": str(run_dir), "auroc_mean": metrics["auroc_mean"],
                "per_class": {str(c): v["auroc_mean"] for c, v in metrics["per_class"].items()}}


def precheck(cfg: DictConfig, settings: ADSettings, device) -> None:
    """Data, trainer and network problems of ``cfg``, raised before any run directory exists: every
    class's data (:func:`~.settings.check_cell_data`: training and test images, ``ad.test_limit``,
    ground-truth masks), the training plan, the network, and the weights the trainer reads
    (its ``check_weights(net)``, e.g. a truncated checkpoint or one of another architecture)."""
    benches = {}
    for cls in settings.classes:
        benches[cls] = cell_benchmark(cfg, settings, cls)
        check_cell_data(benches[cls], settings, cls)
    first = benches[settings.classes[0]]
    plan = plan_training(to_plain(cfg.trainer), first, seed=settings.seeds[0], device=device,
                         num_workers=int(cfg.get("num_workers", 0)))
    net_spec = to_plain(cfg.network)
    net_spec.pop("checkpoint", None)
    net = NETWORKS.build(net_spec)  # e.g. a receptive field larger than the input
    check_weights = getattr(plan.trainer, "check_weights", None)
    if callable(check_weights):
        check_weights(net)


def run_protocol(cfg: DictConfig, settings: ADSettings, ctx: ADContext) -> dict | None:
    """Every class x seed cell of ``cfg`` under ``ctx.dir`` (finished cells are read back), then the
    aggregate (:func:`aggregate`); None on torchrun ranks other than 0."""
    if settings.note:
        ctx.log.info("note: %s", settings.note)
    ctx.log.info("AD protocol %s: classes %s x seeds %s", settings.protocol, settings.classes, settings.seeds)
    if settings.launcher:  # cells as separate jobs; the loop below then reads their results
        run_cells_as_jobs(cfg, settings, ctx)
    records, cells = [], {}
    for cls in settings.classes:
        for seed in settings.seeds:
            result, scores, labels = run_cell(cfg, settings, ctx, cls, seed)
            records.append(ADRecord(cls, seed, scores, labels))
            cells[(cls, seed)] = result
    if not distributed.is_main():  # torchrun: the other ranks only helped to train
        return None
    return aggregate(cfg, settings, ctx, records, cells)


def aggregate(cfg: DictConfig, settings: ADSettings, ctx: ADContext, records: list[ADRecord], cells: dict) -> dict:
    """The run's outputs from its cells: ``metrics.json`` (the ``ad_ovr`` aggregate, plus pixel AUROC means
    when the cells have them), ``metrics.csv`` (one row per class and the mean), ``plots/roc_per_class.png``
    (first seed) and ``report.html``, all under ``ctx.dir``; returns the metrics."""
    metrics = OneVsRestEvaluator(settings.protocol).evaluate(records, method=str(cfg.trainer.get("name")),
                                                              dataset=str(cfg.benchmark.get("name")))
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
                    "benchmark": str(cfg.benchmark.get("name")), "trainer": str(cfg.trainer.get("name")),
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
