"""Validate a whole run's config before anything is created.

:func:`validate_run` is called by the runner after plugins are imported and before a pipeline makes its
run directory, lock or ``.partial`` directory, so a bad value leaves no trace on disk and the user sees
exactly one line. It checks, in this order:

* top-level values: their declared types and ranges (:class:`openood_ext.config.RunSettings`, checked by
  :func:`openood_ext.config.validate`), a usable ``device``, the experiment name (one plain directory
  name), ``output_dir``/``cache_dir`` that are not files;
* the pipeline name, and the sections it declares as its own (``config_sections``: ``ad:``, ...)
  against their settings classes' typed fields;
* ``benchmark``: a registered name, its constructor arguments, and every ID image-list label inside
  ``0 .. num_classes - 1`` (file:line named);
* ``network``: its arguments, and ``num_classes`` equal to the benchmark's;
* ``network.checkpoint`` (or ``checkpoints/<experiment>.pt``): when something is there, a regular file (a
  directory or a device node is an error, not a "missing" checkpoint to train); a run that writes it
  (training) also refuses a symbolic link, which the atomic write would replace;
* ``trainer`` when the run trains (a training pipeline, or ``train_if_missing`` with no checkpoint):
  :func:`openood_ext.trainers.validate_trainer_config`, once: the pipeline reuses the checked plan;
* ``evaluator`` and every postprocessor (its APS grid included) against the part's
  signature and type hints (:mod:`openood_ext.schema`), and against the configured network where the
  method reads the network itself (``check_network``: MC dropout's dropout layers, an ensemble's members);
* run identity: a complete result under the same experiment name is replaced only by a run of the
  same configuration (:mod:`.run_identity`) or with ``overwrite: true``; an unfinished one
  (``<experiment>.partial``) is continued only with ``--resume`` under the same configuration, or
  discarded with ``overwrite: true`` (:func:`.run_identity.check_unfinished`).

Each rule lives with what it is about (a part's typed arguments, a settings class, the run keys in
``config.RunSettings``, the postprocessor list in :mod:`.aps`); this module only walks the config in order.

Every failure is a ConfigError/RegistryError/DataError with one self-contained line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..config import to_plain
from ..config import validate as validate_top_level
from ..datasets import BENCHMARKS
from ..datasets.data_settings import DataSettings
from ..datasets.imglist import read_imglist
from ..errors import CheckpointError, ConfigError
from ..evaluators import EVALUATORS
from ..networks import NETWORKS
from ..networks.checkpoint import load_checkpoint
from ..postprocessors import POSTPROCESSORS
from ..schema import check_section
from ..trainers import validate_trainer_config
from ..utils.io import non_regular_kind
from ..utils.runtime import (
    check_compile,
    check_precision,
    loader_options,
    resolve_device,
)
from . import aps
from .registry import PIPELINES
from .run_identity import (
    changed_keys,
    check_experiment_name,
    check_unfinished,
    complete_result,
    run_identity,
    saved_config,
)


def validate_run(cfg: DictConfig) -> None:
    """Check everything a run reads from ``cfg`` (see the module docstring); raise on the first problem."""
    validate_top_level(cfg)
    check_run_keys(cfg)
    pipeline = check_pipeline(cfg)
    check_pipeline_sections(cfg, pipeline)
    bench = check_benchmark(cfg, pipeline)
    check_network(cfg, bench)
    check_checkpoint_path(cfg, pipeline)
    check_checkpoint_fits(cfg, pipeline)
    if needs_training(cfg, pipeline):
        check_trainer(cfg)
    check_parts(cfg)
    check_postprocessor_splits(cfg, bench)  # after check_parts: the specs are known to build
    check_run_identity(cfg)
    check_unfinished(cfg)


# ---------------------------------------------------------------------------------------------- top level
def _check_not_file(key: str, value: Any) -> None:
    if value is None:
        return
    path = Path(str(value))
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            raise ConfigError(f"{key} {path}: {p} is a file, expected a directory")


def check_run_keys(cfg: DictConfig) -> None:
    """What the run keys' declared types cannot say (config.RunSettings): names, paths, the device."""
    check_experiment_name(cfg.get("experiment", "default"))
    _check_not_file("output_dir", cfg.get("output_dir", "results"))
    _check_not_file("cache_dir", cfg.get("cache_dir"))
    DataSettings.from_config(cfg).cache_root()  # the data: section's types, and a usable cache directory
    device = resolve_device(cfg.get("device", "auto"))
    loader_options(cfg, device)
    check_precision("precision", cfg.get("precision", "fp32"), device)
    trainer = to_plain(cfg.get("trainer")) if "trainer" in cfg else None
    if isinstance(trainer, dict) and trainer.get("precision") is not None:
        check_precision("trainer.precision", trainer["precision"], device)
    check_compile("compile", cfg.get("compile"))


def check_pipeline(cfg: DictConfig):
    name = cfg.get("pipeline")
    if not name:
        raise ConfigError("config has no 'pipeline' key (e.g. pipeline: test_ood)")
    if not isinstance(name, str):
        raise ConfigError(f"config key 'pipeline': expected a name, got {name!r}")
    PIPELINES.get(name)
    return name


def check_pipeline_sections(cfg: DictConfig, pipeline: str) -> None:
    """The pipeline's own sections against the typed fields of the settings classes it declares."""
    for key, settings in (getattr(PIPELINES.get(pipeline), "config_sections", None) or {}).items():
        section = to_plain(cfg.get(key)) if key in cfg else None
        if settings is not None and isinstance(section, dict):
            check_section(key, settings, section)


# ---------------------------------------------------------------------------------------------- parts
def check_benchmark(cfg: DictConfig, pipeline: str | None = None):
    """Build (without preparing) the benchmark; check ID labels against ``num_classes``. None if absent.

    A pipeline class with ``check_benchmark_spec(spec)`` checks the keys only it reads (the AD pipelines:
    EOE's ``preprocessor.normalize`` / ``ms_mode``) before the benchmark is built."""
    if "benchmark" not in cfg:
        return None
    spec = to_plain(cfg.benchmark)
    BENCHMARKS.check(spec)  # name, argument names, types and ranges, before the constructor runs
    check_own_keys = getattr(PIPELINES.get(pipeline), "check_benchmark_spec", None) if pipeline else None
    if isinstance(spec, dict) and check_own_keys is not None:
        check_own_keys(spec)
    bench = BENCHMARKS.build(spec)
    if not isinstance(bench.num_classes, int) or bench.num_classes < 1:
        raise ConfigError(f"benchmark.num_classes: expected an int >= 1, got {bench.num_classes!r}")
    for split in bench.splits(("id_train", "id_val", "id_test")):
        if split.imglist.is_file():
            check_labels(split.imglist, bench.num_classes)
    return bench


def check_labels(imglist: Path, num_classes: int) -> None:
    """DataError naming ``file:line`` of the first label outside ``0 .. num_classes - 1``."""
    read_imglist(imglist, num_classes)


def check_network(cfg: DictConfig, bench) -> None:
    if "network" not in cfg:
        return
    spec = to_plain(cfg.network)
    if not isinstance(spec, dict):
        raise ConfigError(f"config key 'network': expected a mapping, got {spec!r}")
    spec.pop("checkpoint", None)
    _, kwargs = NETWORKS.check(spec)
    classes = kwargs.get("num_classes")
    one_vs_rest = hasattr(bench, "normal")  # its config's num_classes counts the source set's classes
    if bench is not None and not one_vs_rest and classes is not None and classes != bench.num_classes:
        raise ConfigError(f"network.num_classes ({classes}) differs from benchmark.num_classes "
                          f"({bench.num_classes}); the network must have one output per class")


def checkpoint_of(cfg: DictConfig) -> Path:
    """Where the run reads (or writes) its checkpoint: ``network.checkpoint`` or checkpoints/<experiment>.pt."""
    path = cfg.network.get("checkpoint") if "network" in cfg and hasattr(cfg.network, "get") else None
    return Path(str(path)) if path else Path("checkpoints") / f"{cfg.get('experiment', 'default')}.pt"


def check_checkpoint_path(cfg: DictConfig, pipeline: str) -> None:
    """CheckpointError when the checkpoint path exists but is no regular file (one that the run would
    write: no link either, see :func:`openood_ext.utils.io.check_replaceable`)."""
    if "network" not in cfg or not hasattr(cfg.network, "get"):
        return
    path = checkpoint_of(cfg)
    kind = non_regular_kind(path)
    if kind is None or (path.is_file() and not needs_training(cfg, pipeline)):
        return  # absent, a regular file, or a link to one that is only read
    key = "network.checkpoint" if cfg.network.get("checkpoint") else "checkpoint"
    raise CheckpointError(f"{key} {path} is {kind}, not a checkpoint file; give the path of a checkpoint file "
                          f"(or of an absent one to train)")


def check_checkpoint_fits(cfg: DictConfig, pipeline: str) -> None:
    """A checkpoint the run will read (it does not train one) is readable and fits the configured network:
    a truncated file or another architecture is one line now, not after the run directory exists."""
    if "network" not in cfg or needs_training(cfg, pipeline) or not checkpoint_of(cfg).is_file():
        return
    spec = to_plain(cfg.network)
    spec.pop("checkpoint", None)
    load_checkpoint(checkpoint_of(cfg), NETWORKS.build(spec))


def needs_training(cfg: DictConfig, pipeline: str) -> bool:
    if getattr(PIPELINES.get(pipeline), "needs_trainer", False):
        return True
    return bool(cfg.get("train_if_missing", False)) and "network" in cfg and not checkpoint_of(cfg).is_file()


def check_trainer(cfg: DictConfig) -> None:
    if "trainer" not in cfg:
        raise ConfigError("config has no 'trainer' section (needed to train the network)")
    validate_trainer_config(to_plain(cfg.trainer))  # engine keys, trainer, outlier source; reused by the pipeline


def check_parts(cfg: DictConfig) -> None:
    """Evaluator and postprocessors (with their APS grids) against their schemas."""
    if cfg.get("evaluator") is not None:
        EVALUATORS.check(to_plain(cfg.evaluator))
    if "postprocessors" in cfg:
        check_postprocessors(cfg)


def check_postprocessors(cfg: DictConfig) -> None:
    specs = to_plain(cfg.get("postprocessors"))
    aps.check_specs(specs, bool(cfg.get("aps", False)))
    check_postprocessors_on_network(specs, cfg)


def check_postprocessors_on_network(specs: Any, cfg: DictConfig) -> None:
    """Methods that read the network itself check it now: a postprocessor class's
    ``check_network(spec, net, network_spec)`` (MC dropout: a dropout layer; an ensemble: members of the
    run's architecture) gets the configured network, built once without weights."""
    if "network" not in cfg:
        return
    net = network_spec = None
    for i, raw in enumerate([specs] if isinstance(specs, str) else specs):
        spec, _, _ = aps.split_spec(raw, False)
        rule = getattr(POSTPROCESSORS.get(spec["name"]), "check_network", None)
        if not callable(rule):
            continue
        if net is None:
            network_spec = to_plain(cfg.network)
            network_spec.pop("checkpoint", None)
            net = NETWORKS.build(network_spec)
        try:
            rule(spec, net, network_spec)
        except ValueError as exc:
            raise ConfigError(f"postprocessors[{i}] ({spec['name']}): {exc}") from None


def check_postprocessor_splits(cfg: DictConfig, bench) -> None:
    """A method that fits on a split besides the ID ones (``fit_splits``: GrOOD's ood_val) finds it declared
    by the benchmark before anything runs (its images may be prepared by the run: the embedded digits)."""
    if bench is None or not cfg.get("postprocessors"):
        return
    specs = to_plain(cfg.postprocessors)
    splits = {s.name: s for s in bench.splits()}
    for i, raw in enumerate([specs] if isinstance(specs, str) else specs):
        spec, _, _ = aps.split_spec(raw, False)
        for split in getattr(POSTPROCESSORS.build(spec), "fit_splits", ()) or ():
            if split not in splits:
                raise ConfigError(f"postprocessors[{i}] ({spec['name']}): fits on split '{split}', which benchmark "
                                  f"{bench.name} does not declare")


def check_run_identity(cfg: DictConfig) -> None:
    """Refuse to replace a complete result of a different configuration unless ``overwrite: true``."""
    final = Path(str(cfg.get("output_dir", "results"))) / str(cfg.get("experiment", "default"))
    if complete_result(final) is None or cfg.get("overwrite", False):
        return
    new = OmegaConf.to_container(cfg, resolve=True)
    old = saved_config(final)
    if old is not None and run_identity(old) == run_identity(new):
        return
    changed = changed_keys(old, new) if old is not None else ["config.yaml unreadable"]
    shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
    raise ConfigError(f"{final} holds a complete result of another configuration (differs in: {shown}); "
                      f"give experiment=<new name>, or overwrite=true to replace it")
