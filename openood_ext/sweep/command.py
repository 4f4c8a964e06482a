"""``openood-ext sweep``: a grid of runs, one job and one run directory per point, on a launcher backend.

    openood-ext sweep --config a.yml [b.yml ...] key=[v1,v2] seed=[0,1,2] other=value \\
        [--jobs N] [--backend local|submitit|ray] [--backend-option KEY=VALUE ...] [--output-dir DIR] [--dry-run]

* ``key=[v1,v2,...]`` is a sweep axis: the grid is the cartesian product of all axes (first axis slowest).
  A plain ``key=value`` applies to every job. To give every job a *list* value, wrap it once more:
  ``postprocessors=[[msp,knn]]``; to sweep over lists: ``postprocessors=[[msp],[knn]]``.
* Each job is ``openood-ext run --config FILES <its overrides> output_dir=DIR experiment=NAME``, with
  ``DIR`` = ``--output-dir`` (default ``<output_dir of the config>/sweep_<stem of the last config>``) and
  ``NAME`` = ``<the point's experiment>__<key>-<value>__...`` (characters other than letters, digits, ``._+-``
  become ``-``). Every point's config is loaded and checked before any job starts; an empty value list
  (``key=[]``), an unknown key or a bad value is a one-line error (exit 2) and nothing is created. So is
  a grid whose jobs would all train the same missing checkpoint (``train_if_missing``) at once.
* The benchmarks' data are prepared once by the sweep before the jobs start (jobs preparing the same
  data in parallel would race).
* A point whose run was interrupted (``DIR/NAME.partial`` exists, e.g. from an earlier interrupted sweep)
  is resumed (``resume=true``): its stored config must agree with the point's on everything that changes
  results, or the sweep stops before any job with one line naming the keys. Finished cells are never
  discarded; to start such a point over, remove its ``.partial`` directory or give ``overwrite=true``.
* At the end: a status table (job, status, wall time, error), ``DIR/sweep.json`` with the same (a later
  sweep into the same folder keeps it and writes ``sweep-2.json``, ``sweep-3.json``, ...), and the
  command that collects the runs: ``openood-ext leaderboard DIR`` (seeds of one point are averaged there,
  other axes become separate rows with ``key=value`` in ``Hyperparameters``).
* Exit status 0 when every job completed, 1 when one failed, 130 when interrupted (SIGINT or SIGTERM to the
  sweep: the running jobs are stopped first, and stop cleanly, so that the next sweep resumes them).
* ``--backend-option KEY=VALUE`` (value parsed as YAML) goes to the backend, e.g. ``cluster=debug``,
  ``timeout_min=120``, ``slurm_partition=gpu`` for submitit, ``address=auto`` for ray.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from ..config import (
    check_config_paths,
    cli_overrides,
    load_config,
    split_run_args,
    to_plain,
)
from ..datasets import BENCHMARKS
from ..errors import ConfigError
from ..launch import launch, launcher_options
from ..launch.job import config_job
from ..pipelines.ad.settings import ADSettings, cell_benchmark
from ..pipelines.validation import checkpoint_of, validate_run
from ..registry import import_plugins
from ..utils.interrupts import graceful_interrupts
from ..utils.io import write_json

SAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def split_list(text: str, token: str) -> list[str]:
    """The top-level elements of ``[a, [b, c], {d: e}, 'f,g']`` as written (stripped)."""
    body = text.strip()[1:-1]
    items, depth, quote, cur = [], 0, None, ""
    for ch in body:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(cur.strip())
            cur = ""
            continue
        cur += ch
    if quote or depth:
        raise ConfigError(f"sweep: '{token}': unbalanced brackets or quotes in the value list")
    if cur.strip() or items:
        items.append(cur.strip())
    if not items:
        raise ConfigError(f"sweep: '{token}': empty value list (give at least one value, e.g. {token.split('=')[0]}=[v1,v2])")
    if any(not i for i in items):
        raise ConfigError(f"sweep: '{token}': empty element in the value list")
    return items


def parse_grid(overrides: Sequence[str]) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """(axes as (key, value texts), fixed overrides) from ``key=value`` strings."""
    axes, fixed = [], []
    for item in overrides:
        key, _, value = item.partition("=")
        opens, closes = value.strip().startswith("["), value.strip().endswith("]")
        if opens != closes:  # 'seed=[0,1' is no fixed value either: not "no axis to sweep"
            raise ConfigError(f"sweep: '{item}': unbalanced brackets (an axis is key=[v1,v2,...])")
        if opens and closes:
            if key in (k for k, _ in axes):
                raise ConfigError(f"sweep: key '{key}' is swept twice")
            axes.append((key, split_list(value, item)))
        else:
            fixed.append(item)
    return axes, fixed


def point_name(base: str, point: Sequence[tuple[str, str]]) -> str:
    parts = [base] + [f"{key.lstrip('+')}-{SAFE.sub('-', value).strip('-') or 'x'}" for key, value in point]
    return "__".join(parts)


def default_sweep_dir(configs: Sequence[str], fixed: Sequence[str]) -> Path:
    """``<output_dir>/sweep_<stem of the last config file>``."""
    root = Path(str(load_config(configs, fixed).get("output_dir", "results")))
    return root / f"sweep_{SAFE.sub('-', Path(configs[-1]).stem)}"


def plan_sweep(configs: Sequence[str], overrides: Sequence[str], output_dir: str | None = None):
    """(jobs, axes, sweep dir, configs): every grid point's config loaded and validated; nothing is written."""
    axes, fixed = parse_grid(overrides)
    if not axes:
        raise ConfigError("sweep: no axis to sweep (give at least one key=[v1,v2,...])")
    load_config(configs, fixed)  # the fixed part alone first: its errors name no grid point
    sweep_dir = Path(output_dir) if output_dir else default_sweep_dir(configs, fixed)
    if sweep_dir.is_file():
        raise ConfigError(f"sweep: --output-dir {sweep_dir} is a file, expected a directory")
    jobs, names, cfgs = [], set(), []
    for values in itertools.product(*(vals for _, vals in axes)):
        point = [(key, v) for (key, _), v in zip(axes, values)]
        point_overrides = [*fixed, *(f"{k}={v}" for k, v in point)]
        own = load_config(configs, point_overrides)  # the point's own experiment name (interpolations resolved)
        name = point_name(SAFE.sub("-", str(own.get("experiment", "default"))), point)
        if name in names:
            raise ConfigError(f"sweep: two grid points get the same run directory name '{name}' (values that "
                              f"differ only in punctuation); use distinct values")
        names.add(name)
        if (sweep_dir / f"{name}.partial").is_dir() and not _given(point_overrides, "overwrite"):
            point_overrides.append("resume=true")  # an interrupted point: continue it, never discard it
        job = config_job(configs, point_overrides, output_dir=sweep_dir, experiment=name)
        cfg = load_config(configs, [*point_overrides, f"output_dir={sweep_dir}", f"experiment={name}"])
        import_plugins(to_plain(cfg.get("plugins")) or [])
        validate_run(cfg)
        jobs.append(job)
        cfgs.append(cfg)
    check_shared_checkpoints(cfgs)
    return jobs, axes, sweep_dir, cfgs


def _given(overrides: Sequence[str], key: str) -> bool:
    return any(o.split("=", 1)[0].lstrip("+") == key for o in overrides)


def summary_path(sweep_dir: Path) -> Path:
    """``sweep.json``, or the first free ``sweep-N.json`` when an earlier sweep wrote into this folder."""
    path, n = sweep_dir / "sweep.json", 1
    while os.path.lexists(path):
        n += 1
        path = sweep_dir / f"sweep-{n}.json"
    return path


def check_shared_checkpoints(cfgs) -> None:
    """Two jobs must not both train the same missing checkpoint (``train_if_missing``) at once."""
    owners: dict = {}
    for cfg in cfgs:
        path = checkpoint_of(cfg)
        if cfg.get("pipeline") != "train" and cfg.get("train_if_missing", False) and not path.is_file():
            owners.setdefault(path.resolve(), []).append(str(cfg.experiment))
    for path, names in owners.items():
        if len(names) > 1:
            raise ConfigError(f"sweep: {len(names)} jobs would each train the missing checkpoint {path} "
                              f"(train_if_missing); train it once first or set network.checkpoint per job")


def prepare_data(cfgs) -> None:
    """Prepare every benchmark the jobs read, once, here: parallel jobs must not write the same data at once."""
    seen = set()
    for cfg in cfgs:
        key = repr(to_plain(cfg.benchmark))
        if key in seen:
            continue
        seen.add(key)
        if cfg.get("pipeline") in ("ad", "train_ad", "ad_sweep"):
            settings = ADSettings.from_config(cfg)
            for cls in settings.classes:
                cell_benchmark(cfg, settings, cls)
        else:
            BENCHMARKS.build(to_plain(cfg.benchmark)).prepare()


def summary_table(results) -> str:
    rows = [("job", "status", "wall_s", "error")]
    rows += [(r.job.name, r.status, f"{r.wall_s:.1f}", r.error) for r in results]
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{a:{width[0]}s}  {b:{width[1]}s}  {c:>{width[2]}s}  {d}".rstrip() for a, b, c, d in rows)


def main(argv: Sequence[str]) -> int:
    with graceful_interrupts():  # SIGTERM as SIGINT: the jobs are stopped, exit status 130 (cli.main)
        return _main(argv)


def _main(argv: Sequence[str]) -> int:
    configs, rest, resume = split_run_args(argv)
    if resume:
        raise ConfigError("sweep: --resume is not a sweep option (resume one job with openood-ext run --resume RUN_DIR; "
                          "a re-run sweep replaces complete runs of the same configuration)")
    parser = argparse.ArgumentParser(prog="openood-ext sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", "-j", type=int, default=1, help="jobs running at once (default 1)")
    parser.add_argument("--backend", default="local", help="local (default), submitit or ray")
    parser.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--output-dir", help="where the runs go (default <output_dir>/sweep_<last config stem>)")
    parser.add_argument("--dry-run", action="store_true", help="print the jobs' command lines and stop")
    args, tokens = parser.parse_known_args([t for t in rest if t != "--debug"])
    if not configs:
        raise ConfigError("sweep: no config file given (use --config FILE.yml)")
    check_config_paths(configs)
    options = {}
    for item in args.backend_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"sweep: --backend-option '{item}': expected KEY=VALUE")
        options[key] = yaml.safe_load(value)
    launch_kwargs = launcher_options({"backend": args.backend, "jobs": args.jobs, **options}, "sweep")
    jobs, axes, sweep_dir, cfgs = plan_sweep(configs, cli_overrides(tokens), args.output_dir)
    grid = " x ".join(f"{k}[{len(v)}]" for k, v in axes)
    print(f"sweep: {len(jobs)} jobs ({grid}) on backend {args.backend}, {args.jobs} at a time, into {sweep_dir}",
          file=sys.stderr)
    if args.dry_run:
        for job in jobs:
            print(" ".join(job.argv))
        return 0
    t0 = time.perf_counter()
    prepare_data(cfgs)
    results = launch(jobs, **launch_kwargs)
    wall = time.perf_counter() - t0
    print(summary_table(results))
    summary = summary_path(sweep_dir)
    write_json(summary, {
        "configs": list(configs), "axes": {k: v for k, v in axes}, "backend": args.backend, "jobs": args.jobs,
        "wall_s": round(wall, 3),
        "runs": [{"name": r.job.name, "run_dir": str(r.run_dir), "status": r.status, "returncode": r.returncode,
                  "wall_s": round(r.wall_s, 3), "error": r.error, "log": str(r.job.log)} for r in results]})
    done = sum(r.ok for r in results)
    print(f"sweep: {done}/{len(results)} complete in {wall:.1f} s (summary {summary}); collect them with: "
          f"openood-ext leaderboard {sweep_dir}",
          file=sys.stderr)
    if any(r.status == "interrupted" for r in results):
        return 130
    return 0 if done == len(results) else 1
