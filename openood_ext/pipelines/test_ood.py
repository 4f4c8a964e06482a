"""The ``test_ood`` pipeline: ID accuracy and OOD metrics for every listed postprocessor.

``fsood: true`` runs OpenOOD v1.5's full-spectrum setting: the benchmark's covariate-shifted ID sets
(``benchmark.csid``, those present) are scored too and join the ID side of every metric (see the ``ood``
evaluator).

The network runs once per split; every postprocessor that needs only logits/features reads the shared
(and disk-cached) :class:`~openood_ext.features.NetOutputs`. Postprocessors that need intermediate
layers (Gram, MDSEns's fit) declare layer taps, computed in the same pass (the id_train pass fits them,
each test split's pass scores them), so they add no network pass; only input-gradient methods (ODIN,
MDSEns's scoring, ...) re-run the network. A postprocessor under APS is built per grid point and runs
its own passes. Which pass each postprocessor takes is decided by the postprocessor scheduler
(:mod:`openood_ext.postprocessors.schedule`), not here.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .. import distributed
from ..datasets import Benchmark
from ..errors import CheckpointError, ConfigError
from ..evaluators import EVALUATORS, family_of
from ..networks.checkpoint import load_checkpoint
from ..postprocessors import POSTPROCESSORS
from ..postprocessors.base import as_postprocessor
from ..postprocessors.schedule import Scheduler, fit_alone, fit_and_score
from ..reports import write_report
from ..utils.runtime import log_to_file
from . import aps
from .context import RunContext, _git_commit, build_benchmark, build_network
from .outputs import OutputStore
from .registry import PIPELINES
from .results import per_set_table, save_scores, summary_table, write_metrics
from .train import checkpoint_path, train_network


def ensure_checkpoint(cfg: DictConfig, ctx: RunContext, bench: Benchmark) -> Path:
    """The checkpoint path; trains the network first when it is missing and ``train_if_missing``."""
    path = checkpoint_path(cfg, ctx)
    if path.is_file():
        return path
    if not cfg.get("train_if_missing", False):
        raise CheckpointError(f"{path}: checkpoint not found (give network.checkpoint=PATH, "
                              f"or set train_if_missing=true to train it first)")
    ctx.log.info("checkpoint %s is missing: training the network first (train_if_missing: true)", path)
    return train_network(cfg, ctx, bench)


def postprocessor_specs(cfg: DictConfig) -> list:
    specs = cfg.get("postprocessors")
    if not specs:
        raise ConfigError("postprocessors: list at least one postprocessor (e.g. postprocessors=[msp,ebo])")
    if isinstance(specs, str):
        specs = [specs]
    return [OmegaConf.to_container(s, resolve=True) if OmegaConf.is_config(s) else s for s in specs]


def spec_label(spec) -> str:
    """Name of a postprocessor in tables: its ``label`` if given, else its registry name."""
    return spec if isinstance(spec, str) else spec.get("label") or spec["name"]


def report_facts(bench: Benchmark, store: OutputStore) -> dict:
    """Header lines of report.html: date, git commit, ID sample counts."""
    import datetime
    counts = {name: len(store.memo[name]) for name in ("id_train", "id_val", "id_test") if name in store.memo}
    return {"date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "git commit": (_git_commit() or "unknown")[:12],
            "ID samples": ", ".join(f"{k} {v}" for k, v in counts.items())}


def check_outputs_match_classes(net, bench: Benchmark) -> None:
    """ConfigError when the network's last layer has another number of outputs than the benchmark's classes."""
    fc = net.get_fc_layer() if callable(getattr(net, "get_fc_layer", None)) else None
    outputs = getattr(fc, "out_features", None)
    if isinstance(outputs, int) and outputs != bench.num_classes:
        raise ConfigError(f"the network has {outputs} outputs but benchmark {bench.name} has "
                          f"{bench.num_classes} classes (benchmark.num_classes)")


def check_fsood(bench: Benchmark, csid_sets: list, log) -> None:
    """The full-spectrum setting needs covariate-shifted ID sets: ConfigError when the benchmark defines
    none, a warning when every one it defines is absent (the numbers are then the standard setting's)."""
    if not bench.splits(("csid",)):
        raise ConfigError(f"fsood: benchmark {bench.name} defines no covariate-shifted ID sets (benchmark.csid)")
    if not csid_sets:
        log.warning("fsood: none of the covariate-shifted ID sets of %s is present; the ID side is the ID test "
                    "set alone", bench.name)


@PIPELINES.register("test_ood")
class TestOODPipeline:
    """Evaluate postprocessors on a benchmark: ID accuracy + AUROC/AUPR/FPR@95 per OOD set and group."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    def run(self) -> dict:
        with RunContext(self.cfg) as ctx:
            return self._run(ctx)

    def _run(self, ctx: RunContext) -> dict:
        cfg = self.cfg
        specs = postprocessor_specs(cfg)
        aps_default = bool(cfg.get("aps", False))
        plans = []  # (label, build spec, APS?, inline grid); built once up front so typos fail fast
        fixed = {}  # label -> the point of a one-point APS grid (nothing to search)
        for s in specs:
            spec, use_aps, grid = aps.split_spec(s, aps_default)
            as_postprocessor(POSTPROCESSORS.build(spec))
            point = aps.single_point(spec, grid) if use_aps else None
            if point is not None:
                fixed[spec_label(s)] = point
                spec, use_aps = {**spec, **point}, False
            plans.append((spec_label(s), spec, use_aps, grid))
        evaluator = EVALUATORS.build(cfg.get("evaluator", "ood"))
        if family_of(evaluator) != "splits":
            raise ConfigError(f"evaluator: test_ood scores postprocessors per split and needs an evaluator of the "
                              f"'splits' family (e.g. ood); {cfg.get('evaluator')!r} is of the "
                              f"'{family_of(evaluator)}' family")
        bench = build_benchmark(cfg)
        ckpt = ensure_checkpoint(cfg, ctx, bench)
        net = build_network(cfg, ctx.device)
        ckpt_meta = load_checkpoint(ckpt, net)
        check_outputs_match_classes(net, bench)
        ctx.log.info("test_ood: benchmark %s (%d classes), network %s from %s, postprocessors %s, evaluator %s",
                     bench.name, bench.num_classes, cfg.network.get("name"), ckpt,
                     ", ".join(label for label, *_ in plans), cfg.get("evaluator", "ood"))

        fsood = bool(cfg.get("fsood", False))
        ood_sets, csid_sets, skipped = [], [], {}
        for split in bench.splits(("near", "far", "csid") if fsood else ("near", "far")):
            reason = bench.missing_reason(split)
            kind = "csid" if split.group == "csid" else "OOD"
            if reason:
                ctx.log.warning("skipping %s set %s (%s): %s", kind, split.name, split.group, reason)
                skipped[split.name] = (split.group, reason)
            else:
                (csid_sets if split.group == "csid" else ood_sets).append(split)
        if fsood:
            check_fsood(bench, csid_sets, ctx.log)
        store = OutputStore(net, bench, ckpt, cfg, ctx)
        if distributed.is_distributed():  # torchrun: every rank forwards a shard of each split, then only rank 0 goes on
            store.prefetch(ood_sets + csid_sets, aps=any(use_aps for _, _, use_aps, _ in plans))
            if not distributed.is_main():
                return {"run_dir": None, "rank": distributed.rank(), "forward_passes": store.forward_passes}
        # Postprocessors without APS are built now and share the scheduler's passes (layer taps ride on
        # them); one under APS is built per grid point, then with its choice, and runs on its own.
        built = {label: as_postprocessor(POSTPROCESSORS.build(spec)) for label, spec, use_aps, _ in plans
                 if not use_aps}
        shared = Scheduler(built, store, net, ctx.device)
        test_names = ["id_test"] + [s.name for s in ood_sets + csid_sets]
        shared.prepare(test_names, optional=test_names[1:])
        for sets in (ood_sets, csid_sets):
            for s in list(sets):  # every image unreadable under on_bad_image=skip: skip the set, say so
                if s.name in shared.result.skipped:
                    reason = f"all {shared.result.skipped[s.name].skipped} images unreadable (on_bad_image=skip)"
                    ctx.log.warning("skipping %s set %s (%s): %s", "csid" if s.group == "csid" else "OOD", s.name,
                                    s.group, reason)
                    skipped[s.name] = (s.group, reason)
                    sets.remove(s)

        rows, summary = [], {"benchmark": bench.name, "checkpoint": str(ckpt), "postprocessors": {}}
        if fsood:
            summary["fsood"] = {"csid_sets": [s.name for s in csid_sets]}
        for label, spec, use_aps, grid in plans:
            with ctx.timed(f"postprocessor/{label}"):
                if use_aps:
                    search = self._search(spec, grid, store, bench, net, ctx)
                    pp = as_postprocessor(POSTPROCESSORS.build({**spec, **search["chosen"]}))
                    alone = Scheduler({label: pp}, store, net, ctx.device, share_taps=False)
                    alone.prepare(shared.splits)
                    scored = alone.score(label)
                else:
                    search, pp, scored = None, built[label], shared.score(label)
            # one evaluator contract (evaluators package docstring): num_classes is always given
            result = evaluator.evaluate(
                label, scored["id_test"],
                {s.name: (s.group, scored[s.name]) for s in ood_sets}, skipped, num_classes=bench.num_classes,
                **({"csid": {s.name: scored[s.name] for s in csid_sets}} if fsood else {}))
            rows += result.rows
            summary["postprocessors"][label] = {"hyperparameters": pp.hyperparameters(), **result.summary}
            if label in fixed:
                summary["postprocessors"][label]["aps"] = {"chosen": fixed[label], "auroc": None, "trials": []}
                ctx.log.info("APS %s: its grid has one point %s, nothing to search", label, fixed[label])
            if search:
                summary["postprocessors"][label]["aps"] = search
                ctx.log.info("APS %s: chose %s (val AUROC %.2f%%, %d combinations)", label, search["chosen"],
                             100 * search["auroc"], len(search["trials"]))
            save_scores(ctx.dir, label, {k: {"conf": v.conf, "preds": v.preds, "labels": v.labels}
                                         for k, v in scored.items()})

        ctx.log.info("network outputs: %d forward passes, %d cache hits", store.forward_passes, store.cache.hits)
        skipped_images = {name: out.skipped for name, out in store.memo.items() if out.skipped}
        summary.update({"skipped_sets": {s: {"group": g, "reason": r} for s, (g, r) in skipped.items()},
                        "skipped_images": skipped_images})
        frame = write_metrics(ctx.dir, rows, summary)
        table = summary_table(frame)
        self._print(bench, table, per_set_table(frame), skipped, skipped_images)
        if cfg.get("report", True):
            with ctx.timed("report"):
                write_report(ctx.dir, report_facts(bench, store))
        run_dir = ctx.complete({"forward_passes": store.forward_passes, "cache_hits": store.cache.hits,
                                "checkpoint": str(ckpt), "checkpoint_meta": ckpt_meta})
        ctx.log.info("results written to %s", run_dir)
        return {"run_dir": str(run_dir), "table": table, "metrics": frame,
                "forward_passes": store.forward_passes}

    def _search(self, spec: dict, grid, store: OutputStore, bench, net, ctx) -> dict:
        """APS on (ID val, OOD val): each grid point fitted and scored on its own by the scheduler."""
        names = {s.name for s in bench.splits()}
        if "ood_val" not in names:
            raise ConfigError(f"APS needs an OOD validation split, and benchmark '{bench.name}' has none "
                              f"(add benchmark.ood.val)")

        def scores(pp):
            conf = fit_and_score(pp, store, ["id_val", "ood_val"], net, ctx.device)
            return conf["id_val"], conf["ood_val"]

        loaders = {"id_val": store.loader_for("id_val"), "ood_val": store.loader_for("ood_val")}
        return aps.search(spec, grid, scores, fit=lambda pp: fit_alone(pp, store, net, ctx.device), loaders=loaders)

    @staticmethod
    def _print(bench, table, per_set, skipped, skipped_images) -> None:
        """Print the result tables on stdout and copy them into the run's log.txt."""
        lines = [f"\n== {bench.name}: ID accuracy and mean OOD metrics (%) ==", table.to_string(),
                 "\n== AUROC (%) per OOD set ==", per_set.to_string()]
        if skipped:
            lines.append("\nskipped OOD sets (group means marked * are partial): "
                         + "; ".join(f"{s} ({g}): {r}" for s, (g, r) in skipped.items()))
        if skipped_images:
            lines.append("unreadable images skipped: " + ", ".join(f"{k}: {v}" for k, v in skipped_images.items()))
        text = "\n".join(lines)
        print(text)
        log_to_file(text)
