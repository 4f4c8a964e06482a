"""Training one network: the single place where a network is built from its spec, its training loader is
built and the one training loop (:class:`~openood_ext.trainers.Engine`) runs. The ``train`` pipeline (and
``test_ood``'s ``train_if_missing``) and every AD cell train through :func:`fit_network`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import distributed
from ..datasets.batch_source import TensorBatchSource
from ..datasets.data_settings import DataSettings
from ..networks import NETWORKS
from ..trainers import Engine, TrainingPlan
from ..trainers.data import build_train_loader
from ..trainers.history import write_history


@dataclass
class FitResult:
    """What training left: the trained network, its training loader, the engine and the per-epoch history."""

    net: torch.nn.Module
    loader: torch.utils.data.DataLoader
    engine: Engine
    history: list[dict]


def fit_network(plan: TrainingPlan, bench, net_spec: dict[str, Any], *, device: torch.device, seed: int,
                loader_options: dict, state_path: Path, resume: bool, out_dir: Path, log,
                timed: Callable[[str], Any], label: str = "", data: DataSettings | None = None) -> FitResult:
    """Build ``net_spec``'s network on ``device``, train it with ``plan`` on ``bench``'s ``id_train`` split and
    write ``out_dir/history.json`` (rank 0 only; every rank gets the result).

    Contract: the caller seeds the RNGs first (the initial weights come from the global torch RNG, so
    nothing may draw from it between the seeding and this call) and has planned the training against
    ``bench`` (:func:`~openood_ext.trainers.plan_training`). The engine keeps its state in ``state_path``
    until the caller deletes it; ``resume`` continues from it. A trainer with ``trains = False`` (a
    zero-shot scorer) is set up but not trained: empty history. ``label`` prefixes the log line (e.g. the
    AD cell); ``timed("train")`` times the loop. ``data``: the run's ``data:`` settings (None: the
    per-image PIL path); with the tensor backend an image outlier source that can draw from the same
    decoded-image cache (``use_tensor_path``) does so on the training device.
    """
    net = NETWORKS.build(net_spec).to(device)
    loader = build_train_loader(bench, plan.trainer, plan.settings.batch_size, seed, loader_options=loader_options,
                                data=data, device=device, log=log, source=plan.source)
    if isinstance(loader, TensorBatchSource) and hasattr(plan.source, "use_tensor_path"):
        plan.source.use_tensor_path(data, device, log)
    if plan.source is not None:  # an outlier source draws per step, on the training device
        plan.source.ctx.steps_per_epoch = len(loader)
        plan.source.ctx.device = device
    trains = getattr(plan.trainer, "trains", True)
    if distributed.world_size() > 1:
        log.info("data parallel: %d processes x batch %d", distributed.world_size(), plan.settings.batch_size)
    log.info("%straining %s on %s (%d images) for %d epochs with trainer '%s'%s", label, net_spec["name"], bench.name,
             len(loader.dataset), plan.settings.epochs if trains else 0, plan.trainer_name,
             f"; outliers: {plan.source.describe()}" if plan.source is not None else "")
    engine = Engine(plan.trainer, net, loader, plan.settings, device=device, num_classes=bench.num_classes,
                    seed=seed, benchmark=bench, source=plan.source, state_path=state_path, log=log)
    with timed("train"):
        history = engine.fit(resume=resume) if trains else []
    distributed.run_on_main(lambda: write_history(out_dir, history))
    return FitResult(net, loader, engine, history)
