"""Every registered pipeline accepts a shipped config of its own (``configs/pipelines``) without running anything:
the config loads, names the pipeline, passes the run validation (``validate_run``, which the runner calls before
building the pipeline) with the data root pointed at an empty folder, and the pipeline is constructed from it with
a ``run`` method; no run directory is written (AD benchmarks only derive their image lists). The same config with an unknown benchmark is refused, so the validation really
looks at it. One test id per pipeline. (Real tiny runs live in test_end_to_end.py / test_ad_pipeline.py.)"""

from __future__ import annotations

import pytest

from conftest import REPO

from openood_ext.config import load_config
from openood_ext.errors import ConfigError, RegistryError
from openood_ext.pipelines import PIPELINES
from openood_ext.pipelines.validation import validate_run
from sweep_helpers import builtin_names

# name -> a shipped config that runs it (the smallest / most basic one)
CONFIGS = {
    "ad": "ad_fmnist_fcdd.yml",
    "ad_sweep": "ad_cifar10_eoe_oe_limits.yml",
    "oe_search": "oe_search_cifar10.yml",
    "test_ood": "test_ood.yml",
    "train": "train.yml",
}


@pytest.mark.parametrize("name", builtin_names(PIPELINES))
def test_registered_pipeline_accepts_its_config(name, tmp_path, monkeypatch):
    assert name in CONFIGS, f"pipeline {name!r} is registered but has no config in CONFIGS"
    empty = tmp_path / "no_data"
    empty.mkdir()
    monkeypatch.setenv("OPENOOD_EXT_DATA", str(empty))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results"
    path = REPO / "configs" / "pipelines" / CONFIGS[name]
    cfg = load_config([path], [f"output_dir={out}"])
    assert PIPELINES.get(cfg.pipeline) is PIPELINES.get(name), f"{path.name} runs {cfg.pipeline!r}"
    validate_run(cfg)
    pipeline = PIPELINES.get(name)(cfg)
    assert callable(getattr(pipeline, "run", None)), f"{name} has no run()"
    assert PIPELINES.describe(name), f"{name} has no docstring summary"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no_data"], "validation/construction wrote a run"
    # AD benchmarks derive their per-class image lists under the data root when built; nothing else is written
    written = [p for p in empty.rglob("*") if p.is_file()]
    assert all(p.suffix == ".txt" for p in written), written

    bad = load_config([path], [f"output_dir={out}"])
    bad.benchmark.name = "no_such_benchmark"
    with pytest.raises((ConfigError, RegistryError), match="no_such_benchmark"):
        validate_run(bad)
