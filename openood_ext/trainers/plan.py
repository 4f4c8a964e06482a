"""Everything about a training run that can be checked before a run directory exists: the engine
settings, the trainer, and its outlier source (built, set up and checked against the data)."""

from __future__ import annotations

import copy
import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from .. import distributed
from ..config import to_plain
from ..errors import ConfigError
from ..synthesizers import OUTLIER_SOURCES
from .engine import EngineSettings, split_trainer_config
from .registry import TRAINERS
from .trainer import as_trainer


@dataclass
class TrainingPlan:
    settings: EngineSettings
    trainer: Any
    trainer_name: str
    source: Any = None


@dataclass(frozen=True)
class CheckedTrainerConfig:
    """A ``trainer:`` section that passed every check: the engine settings and the registry entries with
    their checked arguments. :meth:`build` makes fresh trainer/source objects from it (each run, and each
    cell of a protocol, needs its own) without checking the values again."""

    settings: EngineSettings
    trainer_name: str
    trainer_factory: Any
    trainer_kwargs: dict
    source_factory: Any = None
    source_kwargs: dict | None = None

    def build(self) -> TrainingPlan:
        trainer = as_trainer(_call(TRAINERS, self.trainer_name, self.trainer_factory, self.trainer_kwargs))
        source = None
        if self.source_factory is not None:
            name = getattr(self.source_factory, "_registry_name", "?")
            source = _call(OUTLIER_SOURCES, name, self.source_factory, self.source_kwargs)
        return TrainingPlan(copy.deepcopy(self.settings), trainer, self.trainer_name, source)

    def current(self) -> bool:
        """False when a registry entry was replaced since the check (``register(..., force=True)``)."""
        if TRAINERS.get(self.trainer_name) is not self.trainer_factory:
            return False
        if self.source_factory is None:
            return True
        return OUTLIER_SOURCES.get(self.source_factory._registry_name) is self.source_factory


def _call(registry, name: str, factory, kwargs: dict):
    """``factory(**kwargs)`` as :meth:`Registry.build` calls it, minus the check already done."""
    try:
        kwargs = copy.deepcopy(kwargs)  # a constructor may keep (and change) a nested mapping
    except Exception:  # objects that cannot be copied are passed as they are
        pass
    try:
        return factory(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{registry.kind} '{name}': {exc}") from exc


def _source_spec(settings: EngineSettings, trainer, trainer_name: str):
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
    return spec


def _check_source_kind(source, trainer, trainer_name: str) -> None:
    needs = getattr(trainer, "needs_outliers", None)
    kind = getattr(source, "kind", "images")
    if kind != needs:
        raise ConfigError(f"trainer '{trainer_name}' needs {needs} outliers, but trainer.outliers "
                          f"'{getattr(source, '_registry_name', type(source).__name__)}' gives {kind}")
    if getattr(source, "dataset_side", False) and not getattr(trainer, "reads_dataset_side", False):
        # the engine does not draw a dataset-side source: a trainer that does not wrap the set would get none
        raise ConfigError(f"trainer.outliers.supervisor: {source.supervisor} makes the anomalies in the training "
                          f"set, which trainer '{trainer_name}' does not read (fcdd and hsc do); use supervisor: batch")


# The runner validates a run's config before its pipeline plans the training, and a protocol (AD: one
# training per class x seed) plans it once per cell: all of them reuse the one check of the same section.
_CHECKED: OrderedDict[str, CheckedTrainerConfig] = OrderedDict()
_CHECKED_MAX = 32


def _key(spec: Any) -> str | None:
    try:
        return json.dumps(to_plain(spec), sort_keys=True)
    except (TypeError, ValueError):  # values JSON cannot hold: check every time
        return None


def check_trainer_config(spec: Mapping[str, Any] | str) -> tuple[CheckedTrainerConfig, TrainingPlan | None]:
    """The checked ``trainer:`` section, and the plan built while checking it (None when the section was
    checked before; build a fresh plan with ``checked.build()``). The section is checked once per
    distinct content; later calls with the same content return the stored result."""
    key = _key(spec)
    checked = _CHECKED.get(key) if key is not None else None
    if checked is not None and checked.current():
        _CHECKED.move_to_end(key)
        return checked, None
    settings, method = split_trainer_config(spec)
    name = method["name"]
    factory, kwargs = TRAINERS.check(method)
    trainer = as_trainer(_call(TRAINERS, name, factory, kwargs))
    source_spec = _source_spec(settings, trainer, name)
    source = source_factory = source_kwargs = None
    if source_spec is not None:
        source_factory, source_kwargs = OUTLIER_SOURCES.check(source_spec)
        source = _call(OUTLIER_SOURCES, getattr(source_factory, "_registry_name", "?"), source_factory, source_kwargs)
        _check_source_kind(source, trainer, name)
    checked = CheckedTrainerConfig(settings, name, factory, kwargs, source_factory, source_kwargs)
    if key is not None:
        _CHECKED[key] = checked
        while len(_CHECKED) > _CHECKED_MAX:
            _CHECKED.popitem(last=False)
    return checked, TrainingPlan(copy.deepcopy(settings), trainer, name, source)


def validate_trainer_config(spec: Mapping[str, Any] | str) -> TrainingPlan:
    """Check ``trainer:`` (engine settings, trainer name and arguments, outlier source) without touching
    data or files; ConfigError/RegistryError with one line naming the key otherwise. Returns a plan with
    a freshly built trainer and source; a section checked before is not checked again."""
    checked, plan = check_trainer_config(spec)
    return plan if plan is not None else checked.build()


def plan_training(spec: Mapping[str, Any] | str, benchmark, *, seed: int, device: torch.device,
                  num_workers: int = 0, subset_key: int | None = None) -> TrainingPlan:
    """:func:`validate_trainer_config` (``spec`` may also be its result, a :class:`TrainingPlan`, used as
    it is), then set the outlier source up on ``benchmark`` and check that
    its data is present (DataError naming what is missing and how to provide it). ``subset_key``
    (e.g. the AD pipeline's normal class) joins the seed in drawing an outlier subset (``limit``).
    A benchmark with ``wrap_outlier_source`` (EOE's ``ms_mode`` on ``train_oe``) wraps the source."""
    plan = spec if isinstance(spec, TrainingPlan) else validate_trainer_config(spec)
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
                                        subset_key, distributed.rank(), distributed.world_size(),
                                        train_size=n_train))
        plan.source.check()
    return plan
