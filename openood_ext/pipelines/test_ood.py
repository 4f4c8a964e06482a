"""The ``test_ood`` pipeline: ID accuracy and OOD metrics for every listed postprocessor.

The network runs once per split; every postprocessor that needs only logits/features reads the shared
(and disk-cached) :class:`~openood_ext.features.NetOutputs`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ..datasets import Benchmark, Split
from ..errors import CheckpointError, ConfigError, DataError
from ..evaluators import EVALUATORS
from ..evaluators.ood import SplitScores
from ..features import FeatureCache, NetOutputs, cache_key, extract_outputs, file_sha256
from ..networks.checkpoint import load_checkpoint
from ..postprocessors import POSTPROCESSORS
from .context import RunContext, build_benchmark, build_network, network_spec
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
    return spec if isinstance(spec, str) else spec.get("label") or spec["name"]


class OutputStore:
    """Network outputs per split, computed once and shared (memory + on-disk FeatureCache)."""

    def __init__(self, net, bench: Benchmark, ckpt: Path, cfg: DictConfig, ctx: RunContext):
        self.net, self.bench, self.ctx = net, bench, ctx
        self.cache = FeatureCache(cfg.get("cache_dir"))
        self.batch_size, self.workers = int(cfg.get("batch_size", 256)), int(cfg.get("num_workers", 0))
        self.base_key = {"checkpoint": file_sha256(ckpt), "network": network_spec(cfg),
                         **bench.preprocessing_key()}
        self._memo: dict[str, NetOutputs] = {}
        self.forward_passes = 0

    def get(self, split: Split) -> NetOutputs:
        if split.name not in self._memo:
            key = cache_key(**self.base_key, imglist=file_sha256(split.imglist))
            self._memo[split.name] = self.cache.get_or_compute(key, lambda: self._forward(split))
        return self._memo[split.name]

    def loader_for(self, split_name: str):
        """A fresh (unshuffled) loader over a split, for postprocessors that need the network."""
        return self.bench.loader(self.bench.split(split_name), batch_size=self.batch_size,
                                 num_workers=self.workers)

    def _forward(self, split: Split) -> NetOutputs:
        self.forward_passes += 1
        loader = self.loader_for(split.name)
        with self.ctx.timed("forward"):
            return extract_outputs(self.net, loader, self.ctx.device, desc=f"forward {split.name}")


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
        postprocessors = [(spec_label(s), POSTPROCESSORS.build(s)) for s in specs]  # fail fast on typos
        evaluator = EVALUATORS.build(cfg.get("evaluator", "ood"))
        bench = build_benchmark(cfg)
        ckpt = ensure_checkpoint(cfg, ctx, bench)
        net = build_network(cfg, ctx.device)
        load_checkpoint(ckpt, net)

        ood_sets, skipped = [], {}
        for split in bench.splits(("near", "far")):
            reason = bench.missing_reason(split)
            if reason:
                ctx.log.warning("skipping OOD set %s (%s): %s", split.name, split.group, reason)
                skipped[split.name] = (split.group, reason)
            else:
                ood_sets.append(split)
        store = OutputStore(net, bench, ckpt, cfg, ctx)
        train_out, id_test = store.get(bench.split("id_train")), store.get(bench.split("id_test"))
        ood_out = {s.name: store.get(s) for s in ood_sets}

        rows, summary = [], {"benchmark": bench.name, "checkpoint": str(ckpt), "postprocessors": {}}
        val_out = store.get(bench.split("id_val"))
        for label, pp in postprocessors:
            if pp.needs_network:
                pp.attach_network(net, ctx.device, store.loader_for)
            with ctx.timed(f"postprocessor/{label}"):
                pp.fit(train_out, val_outputs=val_out)
                scored = {"id_test": self._scores(pp, id_test, store, bench.split("id_test"))}
                scored.update({s.name: self._scores(pp, ood_out[s.name], store, s) for s in ood_sets})
            result = evaluator.evaluate(
                label, scored["id_test"],
                {s.name: (s.group, scored[s.name]) for s in ood_sets}, skipped)
            rows += result.rows
            summary["postprocessors"][label] = {"hyperparameters": pp.hyperparameters(), **result.summary}
            save_scores(ctx.dir, label, {k: vars(v) for k, v in scored.items()})

        skipped_images = {name: out.skipped for name, out in store._memo.items() if out.skipped}
        summary.update({"skipped_sets": {s: {"group": g, "reason": r} for s, (g, r) in skipped.items()},
                        "skipped_images": skipped_images})
        frame = write_metrics(ctx.dir, rows, summary)
        table = summary_table(frame)
        self._print(bench, table, per_set_table(frame), skipped, skipped_images)
        run_dir = ctx.complete({"forward_passes": store.forward_passes, "cache_hits": store.cache.hits})
        ctx.log.info("results written to %s", run_dir)
        return {"run_dir": str(run_dir), "table": table, "metrics": frame,
                "forward_passes": store.forward_passes}

    @staticmethod
    def _scores(pp, outputs: NetOutputs, store: "OutputStore", split: Split) -> SplitScores:
        labels = outputs.labels.numpy() if outputs.labels is not None else np.full(len(outputs), -1)
        conf = pp.score_loader(store.loader_for(split.name)) if pp.needs_network else pp.score(outputs)
        conf = np.asarray(conf, dtype=np.float64)
        if conf.shape != (len(outputs),):
            raise DataError(f"postprocessor '{pp.name}' returned {conf.shape} scores on '{split.name}', "
                            f"expected ({len(outputs)},)")
        return SplitScores(conf, pp.predict(outputs), labels)

    @staticmethod
    def _print(bench, table, per_set, skipped, skipped_images) -> None:
        print(f"\n== {bench.name}: ID accuracy and mean OOD metrics (%) ==")
        print(table.to_string())
        print(f"\n== AUROC (%) per OOD set ==")
        print(per_set.to_string())
        if skipped:
            print("\nskipped OOD sets (group means marked * are partial): "
                  + "; ".join(f"{s} ({g}): {r}" for s, (g, r) in skipped.items()))
        if skipped_images:
            print("unreadable images skipped: " + ", ".join(f"{k}: {v}" for k, v in skipped_images.items()))
