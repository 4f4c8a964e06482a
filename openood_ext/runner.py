"""Run a pipeline from a resolved config: import plugins, then build and run ``cfg.pipeline``."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from .config import load_config, to_plain
from .errors import ConfigError
from .pipelines import PIPELINES
from .pipelines.run_identity import complete_result
from .pipelines.validation import validate_run
from .registry import import_plugins
from .utils.interrupts import graceful_interrupts


def run_config(cfg: DictConfig) -> dict:
    """Run the pipeline named by ``cfg.pipeline``; SIGINT/SIGTERM stop it cleanly (RunInterrupted).

    Everything in ``cfg`` is validated (:func:`openood_ext.pipelines.validation.validate_run`) before the pipeline
    is built, so a bad value raises before any run directory, lock or ``.partial`` directory exists.
    """
    with graceful_interrupts():
        import_plugins(to_plain(cfg.get("plugins")) or [])
        validate_run(cfg)
        return PIPELINES.get(cfg.pipeline)(cfg).run()


def resume_config(run_dir: str | Path, overrides=()) -> DictConfig:
    """The saved config of an interrupted run, with ``resume: true`` (and any overrides) applied."""
    run_dir = Path(run_dir)
    partial = run_dir if run_dir.name.endswith(".partial") else run_dir.with_name(run_dir.name + ".partial")
    if not (partial / "config.yaml").is_file() and complete_result(run_dir) is not None:
        raise ConfigError(f"{run_dir}: this run is complete (run.json status 'complete'), nothing to resume; "
                          f"to run it again: openood-ext run --config {run_dir / 'config.yaml'} overwrite=true")
    source = partial if (partial / "config.yaml").is_file() else run_dir
    if not (source / "config.yaml").is_file():
        raise ConfigError(f"{run_dir}: no config.yaml of an earlier run here (expected a results/<experiment> directory)")
    cfg = load_config([source / "config.yaml"], overrides)
    cfg.resume = True
    return cfg
