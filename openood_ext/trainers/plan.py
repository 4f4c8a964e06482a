"""Everything about a training run that can be checked before a run directory exists: the engine
settings, the trainer, and its outlier source (built, set up and checked against the data)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from ..errors import ConfigError
from .engine import EngineSettings, split_trainer_config
from .registry import TRAINERS
from .trainer import as_trainer


@dataclass
class TrainingPlan:
    settings: EngineSettings
    trainer: Any
    trainer_name: str
    source: Any = None


def _build_source(settings: EngineSettings, trainer, trainer_name: str):
    from ..synthesizers import SYNTHESIZERS
    needs = getattr(trainer, "needs_outliers", None)
    spec = settings.outliers
    if spec is None and needs:
        spec = getattr(trainer, "default_outliers", None)
        if spec is None:
            raise ConfigError(f"trainer '{trainer_name}' needs outliers ({needs}); give trainer.outliers "
                              f"(e.g. {{name: oe_images, imglist: LIST}})")
    if spec is None:
        return None
    if needs is None:
        raise ConfigError(f"trainer '{trainer_name}' does not use outliers; remove trainer.outliers "
                          f"(or pick an outlier trainer such as oe or energy_oe)")
    source = SYNTHESIZERS.build(spec)
    kind = getattr(source, "kind", "images")
    if kind != needs:
        raise ConfigError(f"trainer '{trainer_name}' needs {needs} outliers, but trainer.outliers "
                          f"'{getattr(source, '_registry_name', type(source).__name__)}' gives {kind}")
    return source


def validate_trainer_config(spec: Mapping[str, Any] | str) -> TrainingPlan:
    """Check ``trainer:`` (engine settings, trainer name and arguments, outlier source) without touching
    data or files; ConfigError/RegistryError with one line naming the key otherwise."""
    settings, method = split_trainer_config(spec)
    name = method["name"]
    trainer = as_trainer(TRAINERS.build(method))
    return TrainingPlan(settings, trainer, name, _build_source(settings, trainer, name))


def plan_training(spec: Mapping[str, Any] | str, benchmark, *, seed: int, device: torch.device,
                  num_workers: int = 0, subset_key: int | None = None) -> TrainingPlan:
    """:func:`validate_trainer_config`, then set the outlier source up on ``benchmark`` and check that
    its data is present (DataError naming what is missing and how to provide it). ``subset_key``
    (e.g. the AD pipeline's normal class) joins the seed in drawing an outlier subset (``limit``).
    A benchmark with ``wrap_outlier_source`` (EOE's ``ms_mode`` on ``train_oe``) wraps the source."""
    plan = validate_trainer_config(spec)
    train_set = benchmark.dataset(benchmark.split("id_train"))
    # a trainer's own batch sampler (e.g. class-balanced) rejects impossible sizes here, not mid-run
    plan.trainer.batch_sampler(train_set.labels(), plan.settings.batch_size, seed)
    wrap = getattr(benchmark, "wrap_outlier_source", None)
    if plan.source is not None and wrap is not None:
        plan.source = wrap(plan.source)
    if plan.source is not None:
        from ..synthesizers import SourceContext
        n_train = len(train_set)
        steps = max(1, math.ceil(n_train / plan.settings.batch_size))
        plan.source.setup(SourceContext(benchmark, device, seed, plan.settings.batch_size, steps, num_workers,
                                        subset_key))
        plan.source.check()
    return plan
