"""The AD protocol's class x seed cells as launcher jobs (``ad.launcher``), and the job that runs one cell.

    ad:
      classes: all
      seeds: 5
      launcher: {backend: local, jobs: 2}     # or {backend: submitit, jobs: 50, timeout_min: 120, ...}

:func:`run_cells_as_jobs` (called by the protocol before its cell loop) saves the pipeline's config as
``<run>/cell_jobs.yaml``, prepares every class's benchmark once (parallel jobs must not write the same
data at the same time), and launches one job per unfinished cell::

    python -m openood_ext.pipelines.ad.cell_process RUN_DIR CLASS_JSON SEED

Each job runs the cell function of the in-process loop (:func:`.cell.run_cell`: training with its
``last.pt``, ``checkpoint.pt``, ``scores.npz``, ``result.json``...) in ``<run>/normal_<c>/seed_<s>/``,
its console output in ``seed_<s>.out`` next to it and its log in the cell's ``log.txt``. The protocol's
loop then finds every cell finished and aggregates as without a launcher (identical metrics). When a job
fails the run stops with :class:`~openood_ext.launch.job.JobsFailed` naming the first failed cell and its
log; finished cells are kept and ``openood-ext run --resume RUN_DIR`` launches only the rest.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from omegaconf import DictConfig

from ...config import load_config, save_config, to_plain
from ...launch import launch
from ...launch.job import Job, JobsFailed
from ...registry import import_plugins
from ...utils.runtime import resolve_device, setup_logging
from .cell import ADContext, cell_dir, is_done, run_cell
from .settings import ADSettings, cell_benchmark

CONFIG_NAME = "cell_jobs.yaml"


def run_cells_as_jobs(cfg: DictConfig, settings: ADSettings, ctx: ADContext) -> None:
    """Run the unfinished cells of ``settings`` under ``ctx.dir`` as launcher jobs (``settings.launcher``);
    JobsFailed when one did not complete (the finished ones are kept)."""
    run_dir = Path(ctx.dir).resolve()
    save_config(cfg, run_dir / CONFIG_NAME)
    todo = [(c, s) for c in settings.classes for s in settings.seeds if not is_done(cell_dir(run_dir, c, s))]
    if not todo:
        return
    for cls in dict.fromkeys(c for c, _ in todo):
        cell_benchmark(cfg, settings, cls)  # data prepared here, once: parallel jobs must not write the same files
    jobs = [Job([sys.executable, "-m", "openood_ext.pipelines.ad.cell_process", str(run_dir), json.dumps(c), str(s)],
                cell_dir(run_dir, c, s), name=f"normal_{c}/seed_{s}", cwd=os.getcwd()) for c, s in todo]
    opts = dict(settings.launcher)
    ctx.log.info("AD cells: %d of %d as jobs on backend %s, %d at a time", len(jobs),
                 len(settings.classes) * len(settings.seeds), opts["backend"], opts["max_parallel"])
    with ctx.timed("cell_jobs"):
        results = launch(jobs, **opts)
    for r in results:
        ctx.log.info("cell %s: %s in %.1f s%s", r.job.name, r.status, r.wall_s, f" ({r.error})" if r.error else "")
    failed = [r for r in results if not r.ok]
    if failed:
        first = failed[0]
        raise JobsFailed(f"ad.launcher: {len(failed)} of {len(jobs)} cell jobs did not complete; first: {first.job.name} "
                         f"{first.status}: {first.error} (log {first.job.log}); finished cells are kept")


def run_one_cell(run_dir: Path, cls, seed: int) -> dict:
    """Run cell (cls, seed) of the AD run in ``run_dir`` (its ``cell_jobs.yaml``), logging to the cell's
    ``log.txt``; returns its result."""
    cfg = load_config([run_dir / CONFIG_NAME])
    import_plugins(to_plain(cfg.get("plugins")) or [])
    settings = ADSettings.from_config(cfg)
    log = setup_logging(cell_dir(run_dir, cls, seed) / "log.txt", verbose=bool(cfg.get("verbose", False)))
    ctx = ADContext(run_dir, resolve_device(cfg.get("device", "auto")), log)
    result, _, _ = run_cell(cfg, settings, ctx, cls, seed)
    return result
