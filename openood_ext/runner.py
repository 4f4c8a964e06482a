"""Run a pipeline from a resolved config: import plugins, then build and run ``cfg.pipeline``."""

from __future__ import annotations

from omegaconf import DictConfig

from .config import to_plain
from .errors import ConfigError
from .registry import import_plugins


def run_config(cfg: DictConfig) -> dict:
    import_plugins(to_plain(cfg.get("plugins")) or [])
    from .pipelines import PIPELINES
    import openood_ext.builtin  # noqa: F401
    name = cfg.get("pipeline")
    if not name:
        raise ConfigError("config has no 'pipeline' key (e.g. pipeline: test_ood)")
    return PIPELINES.get(name)(cfg).run()
