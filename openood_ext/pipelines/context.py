"""What every pipeline needs: its run directory, logger, device, seed, and the parts built from config."""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy
import torch
from omegaconf import DictConfig, OmegaConf

from .. import __version__, distributed
from ..config import config_hash, save_config
from ..datasets import BENCHMARKS, Benchmark
from ..errors import ConfigError
from ..networks import NETWORKS
from ..utils.interrupts import RunInterrupted, critical
from ..utils.io import write_json
from ..utils.runtime import resolve_device, seed_everything, setup_logging
from ..utils.timing import add_elapsed
from .run_identity import (
    check_experiment_name,
    check_unfinished,
    complete_result,
    run_identity,
)


class RunContext:
    """A run directory that is either complete or clearly not.

    Work happens in ``<output_dir>/<experiment>.partial/`` (config.yaml, log.txt, checkpoints, ...).
    ``complete()`` writes run.json with ``status: complete`` and swaps the directory into
    ``<output_dir>/<experiment>/``, replacing an older result only then. An interrupted or failed run
    leaves its ``.partial`` directory with ``status: interrupted``/``failed`` and never touches the
    complete result. A lock file keeps two processes from running the same experiment at once.
    Use as a context manager.
    """

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.seed = int(cfg.get("seed", 0))
        seed_everything(self.seed)
        self.device = resolve_device(cfg.get("device", "auto"))
        distributed.init_from_env(self.device)  # torchrun: join the process group (no-op otherwise)
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        root = Path(cfg.get("output_dir", "results"))
        name = check_experiment_name(cfg.get("experiment", "default"))
        self.final_dir = root / name
        self.dir = root / f"{name}.partial"
        self.resume = bool(cfg.get("resume", False))
        self._lock = None
        self.timings: dict[str, float] = {}
        self._t0 = time.perf_counter()
        self.completed = False
        # only rank 0 touches the run directory; its failure (e.g. the lock) is raised on every rank
        distributed.run_on_main(lambda: self._make_run_dir(root, name))
        if self.rank > 0:
            self.log = setup_logging(None, verbose=bool(cfg.get("verbose", False)), rank=self.rank)

    def _make_run_dir(self, root: Path, name: str) -> None:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"output_dir {root} cannot be created: {exc.strerror or exc}") from None
        self._lock = _acquire_lock(root / f".{name}.lock", name)
        check_unfinished(self.cfg)  # again under the lock: validate_run checked before anything was created
        try:
            if self.dir.exists() and not self.resume:
                shutil.rmtree(self.dir)  # an unfinished run discarded on purpose (overwrite: true)
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"output_dir {root}: cannot create {self.dir}: {exc.strerror or exc}") from None
        self.log = setup_logging(self.dir / "log.txt", verbose=bool(self.cfg.get("verbose", False)))
        if not (self.resume and (self.dir / "config.yaml").is_file()):
            save_config(self.cfg, self.dir / "config.yaml")  # a resumed run keeps the record of its start

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and logs to the console (always, outside torchrun)."""
        return self.rank == 0

    def __enter__(self) -> "RunContext":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None and not self.completed and self.is_main:
                status = "interrupted" if issubclass(exc_type, (RunInterrupted, KeyboardInterrupt)) else "failed"
                with contextlib.suppress(Exception):
                    self.write_run_record(status, {"error": str(exc).splitlines()[0] if str(exc) else exc_type.__name__})
                    how = "resume with" if status == "interrupted" else "after fixing the cause, resume with"
                    command = ("openood-ext run" if self.world_size == 1 else
                               f"the same torchrun command (--nproc_per_node {self.world_size}) with main.py")
                    self.log.warning("run %s: %s; partial results kept in %s (%s: %s --resume %s)",
                                     status, exc, self.dir, how, command, self.dir)
        finally:
            if self._lock is not None:
                self._lock.close()
            distributed.shutdown()

    def timed(self, label: str):
        """Context manager adding the block's wall time to ``self.timings[label]``."""
        return add_elapsed(self.timings, label)

    def write_run_record(self, status: str, extra: dict | None = None) -> None:
        if not self.is_main:
            return
        if self.world_size > 1:
            extra = {"processes": self.world_size, **(extra or {})}
        record = {
            "status": status, "seed": self.seed, "config_hash": config_hash(self.cfg),
            "run_identity": run_identity(OmegaConf.to_container(self.cfg, resolve=True)),
            "git_commit": _git_commit(), "device": str(self.device),
            "versions": _versions(), "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "wall_time_s": round(time.perf_counter() - self._t0, 3),
            "nondeterminism": _nondeterminism_notes(self.device), **(extra or {}),
        }
        write_json(self.dir / "run.json", record)

    def complete(self, extra: dict | None = None) -> Path:
        """Record success and move the run into its final directory; returns that directory (other
        torchrun ranks only wait for rank 0 to finish its part)."""
        if not self.is_main:
            self.dir, self.completed = self.final_dir, True
            return self.final_dir
        self.write_run_record("complete", extra)
        if complete_result(self.final_dir) is not None:
            why = "overwrite=true" if self.cfg.get("overwrite", False) else "same configuration"
            self.log.info("replacing the earlier complete result in %s (%s)", self.final_dir, why)
        with critical():
            old = None
            if self.final_dir.exists():
                old = self.final_dir.with_name(f".{self.final_dir.name}.old-{os.getpid()}")
                os.replace(self.final_dir, old)
            os.replace(self.dir, self.final_dir)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        self.dir = self.final_dir
        self.completed = True
        setup_logging(self.dir / "log.txt", verbose=bool(self.cfg.get("verbose", False)))
        return self.final_dir


def _acquire_lock(path: Path, name: str):
    try:
        fh = open(path, "a+")
    except OSError as exc:
        raise ConfigError(f"output_dir {path.parent} is not writable ({exc.strerror or exc}: {path}); "
                          f"give output_dir=<a writable folder>") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise ConfigError(f"experiment '{name}' is already running in another process (lock {path}); "
                          f"pick another experiment= name or wait") from None
    return fh


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
    import sklearn  # only here: its import is slow and only run records need its version
    return {"python": platform.python_version(), "openood_ext": __version__,
            "torch": torch.__version__, "numpy": numpy.__version__, "scikit-learn": sklearn.__version__}


def _nondeterminism_notes(device: torch.device) -> list[str]:
    if device.type != "cuda":
        return []
    return ["cuDNN autotuning and atomic adds make GPU results vary slightly between runs",
            f"cudnn.deterministic={torch.backends.cudnn.deterministic}",
            f"cudnn.benchmark={torch.backends.cudnn.benchmark}",
            f"gpu={torch.cuda.get_device_name(device)}"]
