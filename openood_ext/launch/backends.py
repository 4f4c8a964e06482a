"""The three ways to run :class:`~openood_ext.launch.job.Job` s: local processes, Slurm (submitit), Ray.

Each backend is a function ``(jobs, max_parallel, **options) -> list[JobResult]`` (same order as ``jobs``)
in :data:`BACKENDS`. Every job is a process running its command line (:func:`run_command`), whose output
goes to the job's log file; no backend runs a server of ours.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigError
from ..utils.interrupts import RunInterrupted, critical
from .job import Job, JobResult, result_of


def _open_log(job: Job):
    Path(job.log).parent.mkdir(parents=True, exist_ok=True)
    return open(job.log, "a")  # a resumed job appends to its earlier output


def run_command(argv: list[str], log: str, cwd: str | None = None, env: dict | None = None) -> tuple[int, float]:
    """Run ``argv`` to its end with stdout + stderr appended to ``log``; ``(exit status, seconds)``.

    This is the function the Slurm and Ray backends ship to their workers, so it takes plain types only.
    """
    t0 = time.perf_counter()
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        proc = subprocess.run(argv, check=False, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd, env={**os.environ, **(env or {})})
    return proc.returncode, time.perf_counter() - t0


def visible_gpus() -> list[str]:
    """The GPUs this process may hand out: the entries of ``CUDA_VISIBLE_DEVICES`` when it is set
    (indices or UUIDs; empty: none), else ``0 .. torch.cuda.device_count() - 1``."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip()]
    import torch
    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


class GpuSlots:
    """Deals GPUs to concurrently running jobs: each new job gets the GPU running the fewest jobs (the
    lowest one on a tie), so N parallel jobs on N GPUs take one each, and more jobs than GPUs share them
    round-robin. No GPUs: no assignment."""

    def __init__(self, gpus: list[str]):
        self.gpus = list(gpus)
        self.running = {g: 0 for g in self.gpus}

    def take(self) -> str | None:
        if not self.gpus:
            return None
        gpu = min(self.gpus, key=lambda g: self.running[g])
        self.running[gpu] += 1
        return gpu

    def give_back(self, gpu: str | None) -> None:
        if gpu is not None:
            self.running[gpu] -= 1


def run_local(jobs: list[Job], max_parallel: int = 1, poll_s: float = 0.05,
              gpus: list[int | str] | None = None) -> list[JobResult]:
    """Up to ``max_parallel`` jobs at a time as child processes of this one.

    Each child sees one GPU (``CUDA_VISIBLE_DEVICES``), dealt out over ``gpus`` (default:
    :func:`visible_gpus`) so parallel jobs spread over the GPUs instead of all landing on GPU 0; a job
    whose ``env`` sets ``CUDA_VISIBLE_DEVICES`` itself keeps it. Without GPUs the environment is left alone.

    Ctrl-C / SIGTERM here: the running children get SIGTERM (an ``openood-ext run`` then stops cleanly and
    marks its run directory interrupted), jobs not yet started are reported ``interrupted`` and the
    KeyboardInterrupt propagates after the children exited.
    """
    results: list[JobResult | None] = [None] * len(jobs)
    running: dict[int, tuple[subprocess.Popen, float, object]] = {}
    pending = list(range(len(jobs)))
    slots = GpuSlots([str(g) for g in gpus] if gpus is not None else visible_gpus())
    assigned: dict[int, str | None] = {}
    try:
        while pending or running:
            while pending and len(running) < max(1, max_parallel):
                i = pending.pop(0)
                job = jobs[i]
                fh = _open_log(job)
                env = {**os.environ, **job.env}
                assigned[i] = None if "CUDA_VISIBLE_DEVICES" in job.env else slots.take()
                if assigned[i] is not None:
                    env["CUDA_VISIBLE_DEVICES"] = assigned[i]
                proc = subprocess.Popen(job.argv, stdout=fh, stderr=subprocess.STDOUT, cwd=job.cwd, env=env)
                running[i] = (proc, time.perf_counter(), fh)
            for i, (proc, t0, fh) in list(running.items()):
                if proc.poll() is not None:
                    fh.close()
                    results[i] = result_of(jobs[i], proc.returncode, time.perf_counter() - t0)
                    slots.give_back(assigned.pop(i))
                    del running[i]
            time.sleep(poll_s)
    except BaseException:
        with critical():  # a second SIGINT/SIGTERM waits: the children must not be left running
            for proc, _, fh in running.values():
                proc.terminate()
            for i, (proc, t0, fh) in running.items():
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                fh.close()
        raise
    return results  # type: ignore[return-value]


def run_submitit(jobs: list[Job], max_parallel: int = 1, folder: str | os.PathLike | None = None,
                 cluster: str | None = None, **parameters) -> list[JobResult]:
    """Submit the jobs through ``submitit.AutoExecutor`` (Slurm on a cluster; ``cluster="local"`` or
    ``"debug"`` run them here, which is how the tests use it) as one job array and wait for them.

    ``folder``: submitit's logs and pickles (default ``<first job's output dir>/.submitit``). ``parameters``
    go to ``executor.update_parameters`` (e.g. ``timeout_min=60, slurm_partition="gpu", gpus_per_node=1,
    cpus_per_task=8``); ``max_parallel`` becomes ``slurm_array_parallelism``.
    """
    try:
        import submitit
    except ImportError:
        raise ConfigError("launcher backend 'submitit' needs the submitit package (pip install 'openood_ext[slurm]')") from None
    if not jobs:
        return []
    folder = Path(folder) if folder else jobs[0].run_dir.parent / ".submitit"
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    parameters.setdefault("timeout_min", 24 * 60)
    executor.update_parameters(slurm_array_parallelism=max(1, max_parallel), **parameters)
    t0 = time.perf_counter()
    with executor.batch():
        handles = [executor.submit(run_command, job.argv, str(job.log), job.cwd, dict(job.env)) for job in jobs]
    results = []
    for job, handle in zip(jobs, handles):
        try:
            code, wall = _wait_or_cancel(handle, handles)
        except Exception as exc:  # noqa: BLE001  the scheduler lost the task (timeout, node failure, cancelled)
            results.append(result_of(job, None, time.perf_counter() - t0, f"submitit: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"))
            continue
        results.append(result_of(job, code, wall))
    return results


def _wait_or_cancel(handle, handles):
    """``handle.result()``; on Ctrl-C / SIGTERM every submitted job is cancelled before it propagates."""
    try:
        return handle.result()
    except (KeyboardInterrupt, RunInterrupted):
        with critical():
            for h in handles:
                with contextlib.suppress(Exception):
                    h.cancel(check=False)
        raise


def run_ray(jobs: list[Job], max_parallel: int = 1, address: str | None = None, num_cpus_per_job: float = 1,
            num_gpus_per_job: float = 0, init_kwargs: dict | None = None) -> list[JobResult]:
    """Run the jobs as Ray tasks, at most ``max_parallel`` at a time.

    Connects to ``address`` (e.g. ``"auto"`` on a cluster) or, when Ray is not initialised yet and no
    address is given, starts a local Ray with ``init_kwargs`` (the tests pass ``num_cpus=2``). Each task
    reserves ``num_cpus_per_job`` / ``num_gpus_per_job``.
    """
    try:
        import ray
    except ImportError:
        raise ConfigError("launcher backend 'ray' needs the ray package (pip install 'openood_ext[ray]')") from None
    if not jobs:
        return []
    if not ray.is_initialized():
        ray.init(address=address, **({"include_dashboard": False, "log_to_driver": False} | (init_kwargs or {})))
    task = ray.remote(num_cpus=num_cpus_per_job, num_gpus=num_gpus_per_job)(run_command)
    results: list[JobResult | None] = [None] * len(jobs)
    in_flight: dict = {}
    pending = list(range(len(jobs)))
    t0 = time.perf_counter()
    while pending or in_flight:
        while pending and len(in_flight) < max(1, max_parallel):
            i = pending.pop(0)
            job = jobs[i]
            in_flight[task.remote(job.argv, str(job.log), job.cwd, dict(job.env))] = i
        try:
            done, _ = ray.wait(list(in_flight), num_returns=1)
        except (KeyboardInterrupt, RunInterrupted):
            with critical():  # stop the running tasks before the interrupt propagates
                for ref in in_flight:
                    with contextlib.suppress(Exception):
                        ray.cancel(ref)
            raise
        for ref in done:
            i = in_flight.pop(ref)
            try:
                code, wall = ray.get(ref)
                results[i] = result_of(jobs[i], code, wall)
            except Exception as exc:  # noqa: BLE001  the task or its worker died
                results[i] = result_of(jobs[i], None, time.perf_counter() - t0, f"ray: {str(exc).splitlines()[0]}")
    return results  # type: ignore[return-value]


BACKENDS: dict[str, Callable[..., list[JobResult]]] = {"local": run_local, "submitit": run_submitit, "ray": run_ray}
