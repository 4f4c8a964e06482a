"""What the launcher runs: a :class:`Job` (one command line = one process, one run directory) and the
:class:`JobResult` it hands back.

A job is always a separate process running a command line, so the same job runs unchanged on every backend
(a local subprocess, a Slurm task through submitit, a Ray task). Most jobs are ``openood-ext run`` of a config
with overrides: build them with :func:`config_job`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import OpenOODError

#: Exit statuses of ``openood-ext run`` (cli.main): 0 complete, 2 a user error, 130 interrupted.
STATUS_OF_EXIT = {0: "complete", 130: "interrupted"}


class JobsFailed(OpenOODError):
    """Some launched jobs did not complete (the message names the first and its log); exit status 1."""

    exit_code = 1


@dataclass
class Job:
    """One independent run.

    * ``argv``: the command line (``argv[0]`` the program; usually ``sys.executable``).
    * ``run_dir``: the directory the job writes its results to (for ``openood-ext run``:
      ``<output_dir>/<experiment>``); the launcher does not create it.
    * ``name``: a label for summaries and the log file; defaults to ``run_dir``'s name.
    * ``log``: the job's stdout + stderr (appended); defaults to ``<run_dir>.out`` next to the run directory (not inside
      it: a run directory is swapped in atomically when the run completes).
    * ``cwd`` / ``env``: working directory and extra environment variables of the process.
    """

    argv: list[str]
    run_dir: Path
    name: str = ""
    log: Path | None = None
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.argv = [str(a) for a in self.argv]
        self.run_dir = Path(self.run_dir)
        self.name = self.name or self.run_dir.name
        self.log = Path(self.log) if self.log is not None else self.run_dir.with_name(self.run_dir.name + ".out")


@dataclass
class JobResult:
    """How one job ended: ``status`` is ``complete`` (exit 0), ``interrupted`` (exit 130) or ``failed``
    (any other exit, or the backend could not run it); ``error`` the last line of its log when it did not
    complete; ``wall_s`` seconds from start to end as the backend saw them."""

    job: Job
    status: str
    returncode: int | None
    wall_s: float
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "complete"

    @property
    def run_dir(self) -> Path:
        return self.job.run_dir

    def metrics(self) -> dict:
        """The run's ``metrics.json`` (``{}`` when the run wrote none, e.g. a training run)."""
        path = self.job.run_dir / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def run_record(self) -> dict:
        """The run's ``run.json`` (status, timings, the pipeline's summary figures), ``{}`` when absent."""
        path = self.job.run_dir / "run.json"
        return json.loads(path.read_text()) if path.is_file() else {}


def result_of(job: Job, returncode: int | None, wall_s: float, error: str = "") -> JobResult:
    status = STATUS_OF_EXIT.get(returncode, "failed") if returncode is not None else "failed"
    if status != "complete" and not error:
        error = last_log_line(job.log) or f"exit status {returncode}"
    return JobResult(job, status, returncode, wall_s, error if status != "complete" else "")


def last_log_line(path: Path | None) -> str:
    """The ``openood-ext: error: ...`` line of a job's log if there is one, else its last non-empty line."""
    if path is None or not Path(path).is_file():
        return ""
    lines = [ln.strip() for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("openood-ext: error:")]
    return (errors or lines or [""])[-1][:500]


def config_job(configs: Sequence[str | Path], overrides: Sequence[str] = (), *, output_dir: str | Path,
               experiment: str, name: str = "", cwd: str | None = None) -> Job:
    """A job running ``python -m openood_ext.cli run --config CONFIGS OVERRIDES output_dir=.. experiment=..``;
    its run directory is ``output_dir/experiment``."""
    argv = [sys.executable, "-m", "openood_ext.cli", "run", "--config", *map(str, configs), *overrides,
            f"output_dir={output_dir}", f"experiment={experiment}"]
    return Job(argv, Path(output_dir) / experiment, name=name or experiment, cwd=cwd)
