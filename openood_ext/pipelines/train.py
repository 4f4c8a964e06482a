"""The ``train`` pipeline: fit a network on a benchmark's ID training split with a registered trainer
(:func:`~openood_ext.pipelines.training.fit_network`, the training shared with the AD cells) and save a checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from .. import distributed
from ..config import to_plain
from ..datasets import Benchmark
from ..datasets.data_settings import DataSettings
from ..errors import ConfigError
from ..networks.checkpoint import save_checkpoint
from ..trainers import TrainingPlan, plan_training
from ..trainers.history import plot_loss_curves
from ..utils.runtime import loader_options, resolve_device
from .context import RunContext, build_benchmark, network_spec
from .registry import PIPELINES
from .training import fit_network


def checkpoint_path(cfg: DictConfig, ctx: RunContext) -> Path:
    """``network.checkpoint``, else ``checkpoints/<experiment>.pt``."""
    path = cfg.network.get("checkpoint") if "network" in cfg else None
    return Path(path) if path else Path("checkpoints") / f"{ctx.final_dir.name}.pt"


@torch.no_grad()
def evaluate_accuracy(net: torch.nn.Module, loader, device: torch.device) -> float:
    net.eval()
    correct = total = 0
    for batch in loader:
        images, labels = batch[0].to(device), batch[1].to(device)
        if len(images):
            correct += (net(images).argmax(1) == labels).sum().item()
            total += len(labels)
    return correct / max(total, 1)


def plan_from_config(cfg: DictConfig, bench: Benchmark) -> TrainingPlan:
    """Validate ``cfg.trainer`` and its outlier source against ``bench`` (before any run directory)."""
    if "trainer" not in cfg:
        raise ConfigError("config has no 'trainer' section (needed to train the network)")
    return plan_training(to_plain(cfg.trainer), bench, seed=int(cfg.get("seed", 0)),
                         device=resolve_device(cfg.get("device", "auto")), num_workers=int(cfg.get("num_workers", 0)))


def train_network(cfg: DictConfig, ctx: RunContext, bench: Benchmark, plan: TrainingPlan | None = None) -> Path:
    """Train ``cfg.network`` with ``cfg.trainer`` (:func:`~.training.fit_network`, state in ``ctx.dir/last.pt``),
    then, on rank 0, write the loss curves and the checkpoint (with its validation accuracy); return its path.
    The RNGs are as ``ctx`` seeded them (``seed``)."""
    plan = plan or plan_from_config(cfg, bench)
    fit = fit_network(plan, bench, network_spec(cfg), device=ctx.device, seed=ctx.seed,
                      loader_options=loader_options(cfg, ctx.device), state_path=ctx.dir / "last.pt",
                      resume=ctx.resume, out_dir=ctx.dir, log=ctx.log, timed=ctx.timed,
                      data=DataSettings.from_config(cfg))
    path = checkpoint_path(cfg, ctx)

    def write_outputs() -> None:  # rank 0 only; the other ranks wait for the checkpoint
        history = fit.history
        plot_loss_curves(history, ctx.dir / "plots" / "loss_curves.png")
        val_loader = bench.loader(bench.split("id_val"), batch_size=int(cfg.get("batch_size", 256)),
                                  num_workers=int(cfg.get("num_workers", 0)))
        val_acc = evaluate_accuracy(fit.net, val_loader, ctx.device)
        save_checkpoint(path, fit.net, network_spec(cfg),
                        meta={"benchmark": bench.name, "epochs": plan.settings.epochs, "trainer": plan.trainer_name,
                              "outliers": plan.source.label() if plan.source is not None else None,
                              "val_accuracy": val_acc, "final_loss": history[-1]["loss"] if history else None,
                              "seed": ctx.seed})
        ctx.log.info("trained: val accuracy %.2f%%, checkpoint written to %s", 100 * val_acc, path)

    distributed.run_on_main(write_outputs)
    return path


@PIPELINES.register("train")
class TrainPipeline:
    """Train a network on the benchmark's ID train split with a registered trainer."""

    needs_trainer = True  # validation checks the trainer section

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    def run(self) -> dict:
        bench = build_benchmark(self.cfg)
        plan = plan_from_config(self.cfg, bench)  # bad trainer settings or absent outliers: no run directory
        with RunContext(self.cfg) as ctx:
            path = train_network(self.cfg, ctx, bench, plan)
            run_dir = ctx.complete({"checkpoint": str(path)})
        return {"checkpoint": str(path), "run_dir": str(run_dir)}
