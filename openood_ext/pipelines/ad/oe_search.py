"""The ``oe_search`` pipeline: EOE's search for the best (or worst) single OE image (:mod:`openood_ext.search`).

The config is an ``ad`` pipeline config (benchmark, network, a *short* trainer, ``ad.classes``/``ad.seeds``)
plus::

    pipeline: oe_search
    oe_search:
      mode: evolve            # or random (``samples`` random images)
      candidates: {folder: data/images_classic/texture}   # or {imglist: FILE, image_dir: DIR}
      population: 64          # EOE: 64; generations 50; tournament 3; mate_prob 0.05; mutation_prob 0.55
      generations: 50
      mutation_pool: 10000    # random candidates per mutation/mating; the child is one of the
      one_of_k_best: 50       # 50 nearest beyond duplicate_distance (squared L2 of [0,1] pixels)
      duplicate_distance: 100
      samples: 2000           # random search
      budget: null            # max fitness evaluations (null: population x generations)
      minimize: false         # true: search the worst images
      oe_augment: false       # augment the single OE image like the normal images (EOE's search: no)
      keep_eval_runs: false   # keep each evaluation's checkpoints and scores (large)
      grid: 16                # images in best.png / worst.png
      launcher: null          # {backend: local|submitit|ray, jobs: N}: a generation's evaluations as parallel jobs

Fitness of an image = the ``ad`` pipeline's mean AUROC (over ``ad.classes`` x ``ad.seeds``, EOE: class 0 x
2 seeds) after training with that image as the only OE image (``oe_images`` with a one-line list, so
every OE slot of every batch holds it). The same seeds are used for every image, so fitness differences
come from the image. **Fitness is measured on the test split: an oracle analysis, as in the paper**; every
output says so. Each evaluation is the ``ad`` protocol under ``evals/node_<id>/`` (its cells, ``metrics.json``;
by default pruned to its metrics after it finishes); :class:`FitnessEvaluator` runs them in this process
one after the other (:func:`.protocol.run_protocol`, logging to the search's log), or, with ``launcher``, a
generation's evaluations as separate ``openood-ext run`` jobs through :mod:`openood_ext.launch` (local
processes, Slurm via submitit, Ray).

Outputs: ``evolution.json`` (settings, per-generation fitness, every node with image path, generation,
operation, parents, fitness), ``search_state.json`` (written atomically after every generation; a killed
search resumes with ``openood-ext run --resume RUN_DIR``; finished evaluations of an interrupted generation
are reused), ``best.png`` / ``worst.png`` (image grids with fitness), ``plots/fitness.png``,
``metrics.json`` (the best/worst image and the oracle note).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ...config import save_config, to_plain
from ...errors import ConfigError
from ...launch import JobsFailed, config_job, launch, launcher_options
from ...search import ORACLE_NOTE, Node, Search, SearchSettings
from ...search.candidates import ImagePool
from ...schema import PositiveInt, check_section
from ...utils.io import write_json, write_with
from ...utils.runtime import resolve_device
from ..context import RunContext
from ..registry import PIPELINES
from .cell import ADContext
from .protocol import ADPipelineBase, precheck, run_protocol
from .settings import ADSettings

KEEP_IN_CELLS = {"result.json", "history.json"}


@dataclass
class OESearchSettings(SearchSettings):
    """The ``oe_search:`` section: the algorithm's keys, typed once in
    :class:`~openood_ext.search.SearchSettings` (whose ``check`` adds the checks that relate keys), and the
    pipeline's own. The search's ``seed`` is the run's top-level ``seed``, not a key of this section."""

    candidates: dict | None = None  # {folder: DIR} or {imglist: FILE, image_dir: DIR}; required
    oe_augment: bool = False
    keep_eval_runs: bool = False
    grid: PositiveInt = 16
    launcher: dict | None = None


OWN_KEYS = ("candidates", "oe_augment", "keep_eval_runs", "grid", "launcher")


def search_settings(cfg: DictConfig) -> tuple[SearchSettings, dict]:
    """(algorithm settings, the pipeline's own keys) from ``oe_search:``; ConfigError naming the key."""
    spec = to_plain(cfg.get("oe_search")) or {}
    if not isinstance(spec, dict):
        raise ConfigError(f"config key 'oe_search': expected a mapping, got {spec!r}")
    if "seed" in spec:
        raise ConfigError("oe_search.seed: not a key of this section; the search draws from the run's seed")
    check_section("oe_search", OESearchSettings, spec)
    if not spec.get("candidates"):
        raise ConfigError("oe_search.candidates: missing (the candidate images: {folder: DIR} or {imglist: FILE, image_dir: DIR})")
    s = OESearchSettings(**spec)
    algorithm = {f.name for f in fields(SearchSettings)} - {"seed"}
    settings = SearchSettings(**{k: getattr(s, k) for k in algorithm}, seed=int(cfg.get("seed", 0)))
    own = {key: getattr(s, key) for key in OWN_KEYS}
    own["launcher"] = launcher_options(s.launcher, "oe_search.launcher")
    return settings.check(), own


class FitnessEvaluator:
    """``nodes -> fitness``: one ``ad`` protocol per node under ``<run_dir>/evals`` (see the module doc).

    ``run_ad(config) -> mean AUROC`` runs one evaluation (default :meth:`evaluate`, in this process);
    replace it (or :meth:`__call__`) to send a generation's evaluations elsewhere.
    """

    def __init__(self, cfg: DictConfig, pool: ImagePool, run_dir: Path, own: dict, log,
                 run_ad: Callable[[DictConfig], float] | None = None, timings: dict | None = None):
        self.cfg, self.pool, self.run_dir, self.own, self.log = cfg, pool, run_dir, own, log
        self.run_ad = run_ad or self.evaluate
        self.timings = {} if timings is None else timings

    def evaluate(self, cfg: DictConfig) -> float:
        """The mean AUROC of the ``ad`` protocol of ``cfg`` (an :meth:`eval_config`), run here in
        ``<output_dir>/<experiment>`` with the search's log; cells an interruption finished are reused."""
        settings = ADSettings.from_config(cfg)
        ctx = ADContext(self.run_dir, resolve_device(cfg.get("device", "auto")), self.log, self.timings)
        ctx = ctx.under(Path(cfg.output_dir) / str(cfg.experiment))
        save_config(cfg, ctx.dir / "config.yaml")
        return float(run_protocol(cfg, settings, ctx)["auroc_mean"])

    def name(self, node: Node) -> str:
        return f"node_{node.id:05d}"

    def eval_config(self, node: Node) -> DictConfig:
        c = OmegaConf.to_container(self.cfg, resolve=True)
        c.pop("oe_search", None)
        listing = self.pool.write_list(node.image, self.run_dir / "oe_lists" / f"{self.name(node)}.txt")
        c.update(pipeline="ad", experiment=self.name(node), output_dir=str(self.run_dir / "evals"), resume=True,
                 overwrite=True)
        c["trainer"]["outliers"] = {"name": "oe_images", "imglist": str(listing), "image_dir": str(self.pool.root),
                                    "augment": self.own["oe_augment"]}
        c.setdefault("ad", {})["heatmaps"] = 0
        c["ad"]["note"] = f"OE-search fitness evaluation: the single OE image {self.pool.names[node.image]}"
        return OmegaConf.create(c)

    def finished(self, node: Node) -> float | None:
        """The fitness of an evaluation finished before an interruption (same image), else None.

        Finished = its ``metrics.json`` exists: the protocol writes it after every cell, and a launched
        run's directory only takes its final name once complete. A launched run that says otherwise in
        ``run.json`` is not finished."""
        done = self.run_dir / "evals" / self.name(node)
        listing = self.run_dir / "oe_lists" / f"{self.name(node)}.txt"
        try:
            if (done / "run.json").is_file() and json.loads((done / "run.json").read_text()).get("status") != "complete":
                return None
            same = listing.read_text() == f"{self.pool.names[node.image]} -1\n"
            return float(json.loads((done / "metrics.json").read_text())["auroc_mean"]) if same else None
        except (OSError, ValueError, KeyError):
            return None

    def prune(self, node: Node) -> None:
        if self.own["keep_eval_runs"]:
            return
        for cell in (self.run_dir / "evals" / self.name(node)).glob("normal_*/seed_*"):
            for f in cell.iterdir():
                if f.name not in KEEP_IN_CELLS:
                    shutil.rmtree(f) if f.is_dir() else f.unlink()

    def launch(self, nodes: list[Node]) -> None:
        """Run the unfinished evaluations of ``nodes`` as launcher jobs (one ``openood-ext run`` each)."""
        jobs = []
        for node in nodes:
            if self.finished(node) is None:
                path = self.run_dir / "eval_configs" / f"{self.name(node)}.yaml"
                save_config(self.eval_config(node), path)
                jobs.append(config_job([path], output_dir=self.run_dir / "evals", experiment=self.name(node)))
        if not jobs:
            return
        self.log.info("launching %d fitness evaluations (%s)", len(jobs), self.own["launcher"])
        failed = [r for r in launch(jobs, **self.own["launcher"]) if not r.ok]
        if failed:
            first = failed[0]
            raise JobsFailed(f"oe_search.launcher: {len(failed)} of {len(jobs)} fitness evaluations did not complete; "
                             f"first: {first.job.name} {first.status}: {first.error} (log {first.job.log}); "
                             f"finished evaluations are kept and reused on resume")

    def __call__(self, nodes: list[Node]) -> list[float]:
        if self.own["launcher"]:
            self.launch(nodes)
        out = []
        for k, node in enumerate(nodes):
            value = self.finished(node)
            if value is None:
                value = self.run_ad(self.eval_config(node))
            self.prune(node)
            self.log.info("node %d (gen %d, %s, image %s): fitness %.4f  [%d/%d]", node.id, node.gen, node.op,
                          self.pool.names[node.image], value, k + 1, len(nodes))
            out.append(value)
        return out


def save_grid(pool: ImagePool, nodes: list[Node], path: Path, title: str) -> Path | None:
    """The nodes' images in a grid (8 per row), each titled with its fitness."""
    if not nodes:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = min(8, len(nodes))
    rows = -(-len(nodes) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, node in zip(axes.flat, nodes):
        img = pool.image(node.image).permute(1, 2, 0).numpy()
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
        ax.set_title(f"{node.fitness:.4f}", fontsize=8)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path


def fitness_plot(history: list[dict], path: Path) -> Path | None:
    if not history:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    g = [h["gen"] for h in history]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for key in ("max", "mean", "min"):
        ax.plot(g, [h[key] for h in history], marker="o", label=key)
    ax.set_xlabel("generation (random search: chunk)")
    ax.set_ylabel("fitness (test AUROC, oracle)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path


@PIPELINES.register("oe_search")
class OESearchPipeline(ADPipelineBase):
    """EOE's single-OE-image search (see the module doc)."""

    config_sections = {**ADPipelineBase.config_sections, "oe_search": OESearchSettings}

    def __init__(self, cfg: DictConfig, run_ad: Callable[[DictConfig], float] | None = None):
        self.cfg, self.run_ad = cfg, run_ad  # run_ad: see FitnessEvaluator (None: in this process)

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        settings, own = search_settings(cfg)
        ADSettings.from_config(cfg)
        pool = ImagePool(own["candidates"], to_plain(cfg.benchmark).get("preprocessor") or {})
        settings.check(len(pool))
        with tempfile.TemporaryDirectory() as tmp:  # data/trainer/network problems: no run directory
            probe = FitnessEvaluator(cfg, pool, Path(tmp), own, None).eval_config(Node(0, 0, 0, "check"))
            precheck(probe, ADSettings.from_config(probe), resolve_device(cfg.get("device", "auto")))
        with RunContext(cfg) as ctx:
            ctx.log.info("OE search (%s, %s) over %d candidate images from %s; at most %d fitness evaluations",
                         settings.mode, "minimise: worst image" if settings.minimize else "maximise: best image",
                         len(pool), pool.root, settings.max_evaluations)
            ctx.log.info("note: %s", ORACLE_NOTE)
            evaluator = FitnessEvaluator(cfg, pool, ctx.dir, own, ctx.log, self.run_ad, ctx.timings)
            search = Search(settings, len(pool), pool.distance, ctx.dir / "search_state.json", pool.fingerprint())
            with ctx.timed("search"):
                search.run(evaluator, log=ctx.log.info)
            metrics = self.write_outputs(ctx.dir, search, pool, own["grid"])
            ctx.log.info("OE search: best fitness %.4f (%s), worst %.4f (%s); %s", metrics["best"]["fitness"],
                         metrics["best"]["path"], metrics["worst"]["fitness"], metrics["worst"]["path"], ORACLE_NOTE)
            run_dir = ctx.complete({"best_fitness": metrics["best"]["fitness"]})
        return {"run_dir": str(run_dir), **metrics}

    @staticmethod
    def write_outputs(run_dir: Path, search: Search, pool: ImagePool, grid: int) -> dict:
        write_json(run_dir / "evolution.json", search.genealogy(pool.names))
        best, worst = search.best(grid), search.worst_first(grid)
        save_grid(pool, best, run_dir / "best.png", "best OE images (fitness = test AUROC: oracle analysis)")
        save_grid(pool, worst, run_dir / "worst.png", "worst OE images (fitness = test AUROC: oracle analysis)")
        fitness_plot(search.history, run_dir / "plots" / "fitness.png")
        fits = np.array([n.fitness for n in search.evaluated()])

        def entry(n: Node) -> dict:
            return {"node": n.id, "image": n.image, "path": pool.names[n.image], "fitness": n.fitness}

        metrics = {"oracle_note": ORACLE_NOTE, "mode": search.s.mode, "minimize": search.s.minimize,
                   "evaluations": search.evaluations, "generations_done": search.gen + 1, "stopped": search.stopped,
                   "pool": str(pool.root), "pool_size": len(pool), "best": entry(best[0]), "worst": entry(worst[0]),
                   "fitness_mean": float(fits.mean()), "fitness_std": float(fits.std()),
                   "history": [{k: h[k] for k in ("gen", "min", "mean", "max", "evaluations")} for h in search.history]}
        write_json(run_dir / "metrics.json", metrics)
        return metrics
