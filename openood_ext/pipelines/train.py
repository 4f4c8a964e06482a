"""The ``train`` pipeline: fit a classifier on a benchmark's ID training split and save a checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from ..datasets import Benchmark
from ..errors import ConfigError
from ..networks.checkpoint import save_checkpoint
from ..trainers import TRAINERS
from ..trainers.resume import load_training_state, save_training_state
from .context import RunContext, build_benchmark, build_network, network_spec
from .registry import PIPELINES


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


def train_network(cfg: DictConfig, ctx: RunContext, bench: Benchmark) -> Path:
    """Train ``cfg.network`` with ``cfg.trainer`` and write the checkpoint; return its path."""
    if "trainer" not in cfg:
        raise ConfigError("config has no 'trainer' section (needed to train the network)")
    trainer = TRAINERS.build(cfg.trainer)
    net = build_network(cfg, ctx.device)
    workers = int(cfg.get("num_workers", 0))
    train_loader = bench.loader(bench.split("id_train"), batch_size=trainer.batch_size,
                                num_workers=workers, train=True, seed=ctx.seed)
    val_loader = bench.loader(bench.split("id_val"), batch_size=int(cfg.get("batch_size", 256)),
                              num_workers=workers)
    ctx.log.info("training %s on %s (%d images) for %d epochs with trainer '%s'",
                 network_spec(cfg)["name"], bench.name, len(train_loader.dataset), trainer.epochs,
                 cfg.trainer.get("name") if hasattr(cfg.trainer, "get") else cfg.trainer)
    state_path = ctx.dir / "last.pt"
    generator = train_loader.generator
    resume_state = None
    if ctx.resume and state_path.is_file():
        resume_state = load_training_state(state_path, net, trainer, generator)
        ctx.log.info("resuming training from %s after epoch %d", state_path, resume_state["epoch"])

    def checkpoint_epoch(epoch: int, optim_state: dict, history: list) -> None:
        save_training_state(state_path, net, epoch, optim_state, trainer, generator, history)

    with ctx.timed("train"):
        history = trainer.train(net, train_loader, ctx.device, checkpoint_epoch, resume_state)
    val_acc = evaluate_accuracy(net, val_loader, ctx.device)
    path = checkpoint_path(cfg, ctx)
    save_checkpoint(path, net, network_spec(cfg),
                    meta={"benchmark": bench.name, "epochs": trainer.epochs, "val_accuracy": val_acc,
                          "final_loss": history[-1]["loss"] if history else None, "seed": ctx.seed})
    ctx.log.info("trained: val accuracy %.2f%%, checkpoint written to %s", 100 * val_acc, path)
    return path


@PIPELINES.register("train")
class TrainPipeline:
    """Train a classifier on the benchmark's ID train split (supervised, or with a registered trainer)."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    def run(self) -> dict:
        with RunContext(self.cfg) as ctx:
            bench = build_benchmark(self.cfg)
            path = train_network(self.cfg, ctx, bench)
            run_dir = ctx.complete({"checkpoint": str(path)})
        return {"checkpoint": str(path), "run_dir": str(run_dir)}
