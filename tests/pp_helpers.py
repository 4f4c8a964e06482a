"""Helpers shared by the postprocessor tests: member checkpoints and the refused-before-the-run check."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import REPO

TINY_NET = {"name": "digits_cnn", "num_classes": 4, "in_channels": 1, "width": 2}


def save_members(folder: Path, seeds=(1, 2), **spec) -> list[str]:
    """Tiny random DigitsCNN checkpoints (``spec`` overriding :data:`TINY_NET`; another network's full spec),
    saved with their spec as training saves them, one per seed."""
    from openood_ext.networks import NETWORKS
    from openood_ext.networks.checkpoint import save_checkpoint
    spec = {**TINY_NET, **spec} if spec.get("name", TINY_NET["name"]) == TINY_NET["name"] else spec
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in seeds:
        torch.manual_seed(seed)
        path = folder / f"{spec['name']}_c{spec.get('num_classes')}_w{spec.get('width')}_s{seed}.pt"
        save_checkpoint(path, NETWORKS.build(spec), spec)
        paths.append(str(path))
    return paths


def refused_before_run(tmp_path: Path, monkeypatch, postprocessors: list, match: str, network: dict | None = None):
    """The main digits config with these postprocessors fails the pre-run validation with one ConfigError line
    matching ``match``, and no output directory is created."""
    from omegaconf import OmegaConf

    from openood_ext.config import load_config
    from openood_ext.errors import ConfigError
    from openood_ext.pipelines.validation import validate_run
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results"
    cfg = load_config([REPO / "configs" / "pipelines" / "test_ood.yml"], [f"output_dir={out}"])
    cfg.postprocessors = OmegaConf.create(postprocessors)
    for key, value in (network or {}).items():
        cfg.network[key] = value
    with pytest.raises(ConfigError, match=match) as info:
        validate_run(cfg)
    assert "\n" not in str(info.value)
    assert not out.exists()
    return str(info.value)
