"""Fan-out of independent runs on an existing scheduler: local processes, Slurm (submitit) or Ray.

Python API (what the sweep command, the AD pipeline's ``ad.launcher`` and EOE's fitness evaluations use)::

    from openood_ext.launch import Job, config_job, launch

    jobs = [config_job(["configs/pipelines/test_ood.yml"], [f"seed={s}"],
                       output_dir="results/my_sweep", experiment=f"seed{s}") for s in range(3)]
    results = launch(jobs, backend="local", max_parallel=2)       # blocks until every job ended
    for r in results:
        print(r.job.name, r.status, r.wall_s, r.error)            # status: complete | failed | interrupted
        if r.ok:
            print(r.metrics())                                    # the run's metrics.json as a dict

* A :class:`Job` is one process: a command line (``argv``), the run directory it writes (``run_dir``), a
  log file for its stdout + stderr (default ``<run_dir>.out``), optional ``cwd`` / ``env``.
  :func:`config_job` builds the usual one, ``openood-ext run --config FILES OVERRIDES output_dir=..
  experiment=..``; any other command line works too (``Job([sys.executable, "my_fitness.py", ...], dir)``).
* :func:`launch` runs them and returns one :class:`JobResult` per job, in the order given, never raising
  for a job that failed (look at ``status`` / ``error``; ``error`` is the job's ``openood-ext: error:``
  line or its last log line). Unknown backends or options raise ConfigError before anything runs.
* Backends (:data:`BACKENDS`): ``local`` (default; ``max_parallel`` child processes at a time, each
  given one GPU through ``CUDA_VISIBLE_DEVICES``, dealt out over the visible GPUs or the ``gpus`` option),
  ``submitit`` (``submitit.AutoExecutor``: Slurm on a cluster, ``cluster="local"|"debug"`` on one machine;
  other options go to ``update_parameters``, e.g. ``timeout_min``, ``slurm_partition``, ``gpus_per_node``),
  ``ray`` (Ray tasks; ``address="auto"`` joins a running cluster, otherwise a local Ray starts;
  ``num_cpus_per_job``, ``num_gpus_per_job``).
* Jobs must not share a run directory (ConfigError); each job's run directory is its own ``RunContext``,
  so a job that was interrupted can be resumed with ``openood-ext run --resume <run_dir>``.
* Config form (``ad.launcher``, the sweep command): ``{backend: local, jobs: 2, <backend options>}``,
  checked by :func:`launcher_options`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError
from ..schema import PositiveInt, check_value
from .backends import BACKENDS, run_command
from .job import Job, JobResult, JobsFailed, config_job

__all__ = ["BACKENDS", "Job", "JobResult", "JobsFailed", "config_job", "launch", "launcher_options", "run_command"]


def launch(jobs: Sequence[Job], backend: str = "local", max_parallel: int = 1, **options: Any) -> list[JobResult]:
    """Run ``jobs`` on ``backend`` with at most ``max_parallel`` at once; one JobResult per job, same order."""
    jobs = list(jobs)
    check_backend(backend, options, "launcher")
    check_value("launcher: jobs (max parallel)", max_parallel, PositiveInt)
    seen: dict = {}
    for job in jobs:
        key = job.run_dir.resolve()
        if key in seen:
            raise ConfigError(f"launcher: jobs '{seen[key]}' and '{job.name}' share the run directory {job.run_dir}")
        seen[key] = job.name
    return BACKENDS[backend](jobs, max_parallel, **options)


def check_backend(backend: Any, options: dict, where: str) -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"{where}.backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    params = inspect.signature(BACKENDS[backend]).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    allowed = [n for n in params if n not in ("jobs", "max_parallel")]
    unknown = sorted(k for k in options if k not in params or k in ("jobs", "max_parallel"))
    if unknown and not takes_any:
        raise ConfigError(f"{where}: unknown option(s) {unknown} for backend {backend} (known: backend, jobs, "
                          f"{', '.join(allowed)})")


def launcher_options(spec: Any, where: str) -> dict | None:
    """Check a ``{backend: ..., jobs: N, **options}`` config mapping; returns the keyword arguments of
    :func:`launch` (``backend``, ``max_parallel``, options), or None for a null/false spec."""
    if spec is None or spec is False:
        return None
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping like {{backend: local, jobs: 2}}, got {spec!r}")
    options = dict(spec)
    backend = options.pop("backend", "local")
    jobs = options.pop("jobs", 1)
    check_value(f"{where}.jobs", jobs, PositiveInt)
    check_backend(backend, options, where)
    return {"backend": backend, "max_parallel": jobs, **options}
