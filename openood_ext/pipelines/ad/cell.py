"""One cell of the AD protocol: the network of one (normal class, seed), trained and scored.

:func:`run_cell` is the only class x seed body: the ``ad`` pipeline's loop, each ``ad_sweep`` value, each
``oe_search`` fitness evaluation and a launcher's cell job (:mod:`.jobs`) all run it. It is idempotent:
a cell whose ``result.json`` and ``scores.npz`` exist is read back, not redone, and an unfinished one
continues its training from ``last.pt``. Under torchrun every rank trains (data parallel), rank 0 alone
decides, scores and writes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from omegaconf import DictConfig
from PIL import Image

from ... import distributed
from ...config import to_plain
from ...datasets.data_settings import DataSettings
from ...datasets.eval_batches import eval_loader
from ...datasets.image_modes import convert_image
from ...errors import DataError
from ...evaluators.metrics import auroc
from ...evaluators.pixel import PixelEvaluator
from ...networks.checkpoint import save_checkpoint
from ...reports.plots import ad_class_roc_plot
from ...synthesizers.pixels import PixelSpace
from ...datasets.transforms import geometry
from ...trainers import plan_training
from ...utils.io import write_json, write_stream
from ...utils.runtime import loader_options, seed_everything
from ...utils.timing import add_elapsed
from ..context import RunContext
from ..training import fit_network
from .data import outlier_record, subset_key
from .heatmaps import save_heatmap_grids
from .infer import scorer_of, scoring_meta
from .settings import TEST_SPLITS, ADSettings, cell_benchmark, collect_test_set, limit_train_split


@dataclass
class ADContext:
    """Where AD cells write and what they run on: the directory holding ``normal_<c>/seed_<s>/``, the
    device, the log and the timings (``timed(label)`` adds to ``timings[label]``).

    The ``ad`` pipeline makes one from its :class:`~openood_ext.pipelines.context.RunContext`
    (:meth:`of`), ``ad_sweep`` and ``oe_search`` one per value / evaluation (:meth:`under`: another
    directory, the same log and timings), a cell job one of its own (:mod:`.jobs`)."""

    dir: Path
    device: torch.device
    log: logging.Logger
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, ctx: RunContext) -> ADContext:
        return cls(ctx.dir, ctx.device, ctx.log, ctx.timings)

    def under(self, directory: Path) -> ADContext:
        """The same context writing below ``directory`` (created here; rank 0 only)."""
        distributed.run_on_main(lambda: directory.mkdir(parents=True, exist_ok=True))
        return dataclasses.replace(self, dir=directory)

    def timed(self, label: str):
        """Context manager adding the block's wall time to ``self.timings[label]``."""
        return add_elapsed(self.timings, label)


def cell_dir(root: Path, cls, seed: int) -> Path:
    """``root/normal_<cls>/seed_<seed>``: the directory of one cell."""
    return Path(root) / f"normal_{cls}" / f"seed_{seed}"


def is_done(cell: Path) -> bool:
    """Whether the cell finished: ``result.json`` is written last, after ``scores.npz``."""
    return (cell / "result.json").is_file() and (cell / "scores.npz").is_file()


def run_cell(cfg: DictConfig, settings: ADSettings, ctx: ADContext, cls, seed: int):
    """Train and score the cell (``cls``, ``seed``) of ``cfg`` under ``ctx.dir``; returns ``(result,
    scores, is_anomaly)`` on rank 0 and ``(None, None, None)`` on the other torchrun ranks.

    Writes, in :func:`cell_dir`: ``history.json``, ``checkpoint.pt`` (with what ``openood-ext ad-score``
    needs), ``scores.npz``, ``roc.png``, heatmap grids, ``train_subset.txt`` (``ad.train_limit``) and
    ``result.json`` last; ``last.pt`` (the training state) only while the cell is unfinished."""
    cell = cell_dir(ctx.dir, cls, seed)
    done = cell / "result.json"
    if distributed.broadcast_object(is_done(cell)):  # rank 0 decides: the ranks must agree on training
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
    plan = plan_training(to_plain(cfg.trainer), bench, seed=seed, device=ctx.device,
                         num_workers=int(cfg.get("num_workers", 0)),
                         subset_key=subset_key(cls))  # an OE-limit subset drawn anew per class x seed
    net_spec = to_plain(cfg.network)
    net_spec.pop("checkpoint", None)  # every cell trains its own network
    seed_everything(seed)  # after planning (which may draw), right before the initial weights
    data = DataSettings.from_config(cfg)
    fit = fit_network(plan, bench, net_spec, device=ctx.device, seed=seed,
                      loader_options=loader_options(cfg, ctx.device), state_path=cell / "last.pt", resume=True,
                      out_dir=cell, log=ctx.log, timed=ctx.timed, label=f"class {cls} seed {seed}: ", data=data)
    if not distributed.is_main():  # torchrun: rank 0 alone saves, scores and writes the cell
        distributed.barrier()
        return None, None, None
    trained = getattr(plan.trainer, "trains", True)
    save_checkpoint(cell / "checkpoint.pt", fit.net, net_spec,
                    meta={"benchmark": bench.name, "normal_class": cls, "protocol": settings.protocol,
                          "seed": seed, "epochs": plan.settings.epochs, "trainer": plan.trainer_name,
                          **scoring_meta(bench, cfg, fit.engine)})  # what `openood-ext ad-score` needs
    with ctx.timed("test"):
        scores, labels, paths, heat, masks = score_test_set(
            bench, scorer_of(plan.trainer, fit.net), settings, cell, ctx.device, int(cfg.get("batch_size", 256)),
            loader_options(cfg, ctx.device), data=data, log=ctx.log)
    value = auroc(scores, labels)
    result = {"class": cls, "seed": seed, "auroc": value, "n_test": int(len(labels)),
              "n_anomalous": int(labels.sum()), "n_train": len(fit.loader.dataset),
              "epochs": plan.settings.epochs if trained else 0,
              "final_loss": fit.history[-1]["loss"] if fit.history else None}
    if plan.source is not None:
        result["outliers"] = outlier_record(plan.source)
    if heat is not None and masks is not None:
        result.update(PixelEvaluator().evaluate(heat, masks, method=plan.trainer_name, split=f"normal_{cls}"))
    if heat is not None and settings.heatmaps:
        display = getattr(plan.trainer, "display_maps", None)  # FCDD's baselines blur only what is shown
        save_heatmap_grids(cell, heat if display is None else DisplayedMaps(heat, display), scores, labels,
                           lambda rows: load_test_images(bench, paths, rows),
                           settings.heatmaps, settings.heatmap_quantile, title=f"normal {cls}")
    ad_class_roc_plot({cls: (scores, labels)}, cell / "roc.png", title=f"normal class {cls}, seed {seed}")
    write_stream(cell / "scores.npz", lambda fh: np.savez(fh, scores=scores, is_anomaly=labels, paths=np.asarray(paths)))
    del heat, masks  # close the memory maps before their files are deleted
    if not settings.keep_heatmaps:
        for name in ("heatmaps.npy", "masks.npy"):
            (cell / name).unlink(missing_ok=True)
    write_json(done, result)
    (cell / "last.pt").unlink(missing_ok=True)
    ctx.log.info("class %s seed %d: AUROC %.4f%s", cls, seed, value,
                 f", pixel AUROC {result['pixel_auroc']:.4f}" if "pixel_auroc" in result else "")
    distributed.barrier()  # the other ranks wait for the finished cell
    return result, scores, labels


class DisplayedMaps:
    """Rows of ``heat`` [N, H, W] passed through ``display`` (maps [B, H, W] -> [B, H, W]) when read."""

    def __init__(self, heat: np.ndarray, display):
        self.heat, self.display = heat, display

    def __getitem__(self, rows) -> np.ndarray:
        maps = torch.as_tensor(np.asarray(self.heat[rows], np.float32))
        squeeze = maps.dim() == 2
        out = self.display(maps.unsqueeze(0) if squeeze else maps)
        return (out[0] if squeeze else out).cpu().numpy()

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[np.arange(len(self.heat))]
        return out if dtype is None else out.astype(dtype)


def mask_transform(pre: dict):
    """Ground-truth masks resized/cropped like the images (nearest neighbour: masks stay binary)."""
    return T.Compose(geometry(pre, train=False, interpolation=T.InterpolationMode.NEAREST))


def _stack_images(batch):
    return (torch.stack([x[0] for x in batch]),)


def scored_batches(bench, split_name: str, ds, idx: list[int], batch_size: int, device, loader_opts: dict | None,
                 data: DataSettings | None, log):
    """Image batches of rows ``idx`` of a test split, in that order: from the decoded-image cache where
    ``data`` allows it (the same tensors, :mod:`openood_ext.datasets.eval_batches`), else per image."""
    decoded = eval_loader(bench, bench.split(split_name), data, batch_size, device, log, rows=idx)
    if decoded is not None:
        return (batch[0] for batch in decoded)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, idx), batch_size=batch_size,
                                         collate_fn=_stack_images, **(loader_opts or {}))
    return (images for (images,) in loader)


def score_test_set(bench, scorer, settings: ADSettings, cell: Path, device, batch_size: int,
                   loader_opts: dict | None = None, data: DataSettings | None = None, log=None):
    """Score every test image; heatmaps go to ``cell/heatmaps.npy`` (memory-mapped: a test set's maps
    need not fit in memory), masks to ``cell/masks.npy`` when the benchmark has them. Returns (scores,
    is_anomaly, paths, heat, masks); DataError when a score is not finite. ``loader_opts``: DataLoader
    options (``num_workers``, ``pin_memory``, ... from :func:`~openood_ext.utils.runtime.loader_options`);
    ``data``: the run's ``data:`` settings (None: every image through the per-image DataLoader)."""
    parts, paths, labels = collect_test_set(bench, settings.test_limit)
    n = len(paths)
    scores = np.zeros(n, np.float64)
    heat = masks = None
    has_masks = bool(getattr(bench, "has_masks", False))
    mtf = mask_transform(bench.preprocessor) if has_masks else None
    pos = 0
    for (ds, idx), split_name in zip(parts, TEST_SPLITS):
        for images in scored_batches(bench, split_name, ds, idx, batch_size, device, loader_opts, data, log):
            s, h = scorer(images.to(device, non_blocking=True))
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
            out.append(tf(convert_image(img, mode, root / p)))
    return pixels.to_unit(torch.stack(out)).clamp(0, 1).numpy()
