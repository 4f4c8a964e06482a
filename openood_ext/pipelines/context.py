"""What every pipeline needs: its run directory, logger, device, seed, and the parts built from config."""

from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..config import config_hash, save_config
from ..datasets import BENCHMARKS, Benchmark
from ..errors import ConfigError
from ..networks import NETWORKS
from ..utils.io import write_json
from ..utils.runtime import get_logger, resolve_device, seed_everything, setup_logging


class RunContext:
    """Run directory ``<output_dir>/<experiment>/`` with config.yaml, log.txt and run.json."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.seed = int(cfg.get("seed", 0))
        seed_everything(self.seed)
        self.device = resolve_device(cfg.get("device", "auto"))
        self.dir = Path(cfg.get("output_dir", "results")) / str(cfg.get("experiment", "default"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = setup_logging(self.dir / "log.txt", verbose=bool(cfg.get("verbose", False)))
        save_config(cfg, self.dir / "config.yaml")
        self.timings: dict[str, float] = {}
        self._t0 = time.perf_counter()

    def timed(self, label: str):
        ctx = self

        class _Timer:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                ctx.timings[label] = ctx.timings.get(label, 0.0) + time.perf_counter() - self.t

        return _Timer()

    def write_run_record(self, status: str, extra: dict | None = None) -> None:
        record = {
            "status": status, "seed": self.seed, "config_hash": config_hash(self.cfg),
            "git_commit": _git_commit(), "device": str(self.device),
            "versions": _versions(), "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "wall_time_s": round(time.perf_counter() - self._t0, 3),
            "nondeterminism": _nondeterminism_notes(self.device), **(extra or {}),
        }
        write_json(self.dir / "run.json", record)


def build_benchmark(cfg: DictConfig) -> Benchmark:
    if "benchmark" not in cfg:
        raise ConfigError("config has no 'benchmark' section (add e.g. configs/benchmarks/digits.yml)")
    bench = BENCHMARKS.build(cfg.benchmark)
    bench.prepare()
    return bench


def network_spec(cfg: DictConfig) -> dict[str, Any]:
    """The network config without the keys that are not constructor arguments."""
    if "network" not in cfg:
        raise ConfigError("config has no 'network' section")
    spec = OmegaConf.to_container(cfg.network, resolve=True)
    spec.pop("checkpoint", None)
    return spec


def build_network(cfg: DictConfig, device: torch.device) -> torch.nn.Module:
    return NETWORKS.build(network_spec(cfg)).to(device)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parents[2])
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    import numpy
    import sklearn
    import openood_ext
    return {"python": platform.python_version(), "openood_ext": openood_ext.__version__,
            "torch": torch.__version__, "numpy": numpy.__version__, "scikit-learn": sklearn.__version__}


def _nondeterminism_notes(device: torch.device) -> list[str]:
    if device.type != "cuda":
        return []
    return ["cuDNN autotuning and atomic adds make GPU results vary slightly between runs",
            f"cudnn.deterministic={torch.backends.cudnn.deterministic}",
            f"cudnn.benchmark={torch.backends.cudnn.benchmark}",
            f"gpu={torch.cuda.get_device_name(device)}"]


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
