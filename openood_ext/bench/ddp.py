"""``openood-ext bench ddp``: data-parallel speed-up of training and of test_ood, measured in one run.

    openood-ext bench ddp [--nproc 2] [--threads 1] [--epochs 10] [--train-config FILE] [--test-config FILE]
                          [-o out.json] [key=value ...]

1. ``train`` with 1 process, then with ``torchrun --nproc_per_node N`` (gloo on the CPU, nccl with
   ``device=cuda``); ``trainer.batch_size`` is per process, so N processes split each epoch N ways
   (the same epochs over the same data, N times the global batch).
2. ``test_ood`` with the checkpoint of step 1 (cache off, MSP only, no report), 1 process vs N.

The times compared are the ones each run records in its ``run.json`` (``timings_s.train``: the training
loop; ``timings_s.forward``: the forward passes over every split, for N processes including the gather),
so interpreter and process-group start-up are left out; the wall times with start-up are printed too.
Every process gets ``--threads`` intra-op threads (OMP_NUM_THREADS), the 1-process run as well, so the
ratio is the data-parallel speed-up at equal per-process resources (ideal: N). ``key=value`` overrides go
to every run (e.g. ``device=cuda`` on a GPU machine, ``trainer.batch_size=128``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..distributed import free_port
from ..errors import ConfigError
from ..utils.io import write_json

REPO = Path(__file__).resolve().parents[1]
TRAIN_CONFIG = REPO / "configs" / "pipelines" / "train.yml"
TEST_CONFIG = REPO / "configs" / "pipelines" / "test_ood.yml"


def _run(nproc: int, args: list[str], threads: int, cwd: Path) -> tuple[dict, float]:
    """Run main.py with ``args`` in 1 or ``nproc`` processes; returns (its run.json, wall seconds)."""
    main = [str(REPO / "main.py"), *args]
    cmd = [sys.executable, *main] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *main]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise ConfigError(f"bench ddp: {'torchrun ' if nproc > 1 else ''}main.py {' '.join(args)} failed: {tail}")
    experiment = next(a.split("=", 1)[1] for a in args if a.startswith("experiment="))
    record = json.loads((cwd / "results" / experiment / "run.json").read_text())
    return record, wall


def bench_ddp(nproc: int = 2, threads: int = 1, epochs: int = 10, train_config: Path = TRAIN_CONFIG,
              test_config: Path = TEST_CONFIG, overrides: list[str] | None = None) -> dict:
    overrides = list(overrides or [])
    if nproc < 2:
        raise ConfigError(f"bench ddp: --nproc must be >= 2, got {nproc}")
    with tempfile.TemporaryDirectory(prefix="bench_ddp_") as tmp:
        work = Path(tmp)
        ckpt = work / "bench_ddp.pt"
        result = {"nproc": nproc, "threads_per_process": threads, "epochs": epochs, "overrides": overrides,
                  "train_config": str(train_config), "test_config": str(test_config)}
        train = ["--config", str(train_config), f"trainer.epochs={epochs}", "output_dir=results", *overrides]
        one, wall1 = _run(1, [*train, "experiment=train_1", f"network.checkpoint={work / 'one.pt'}"], threads, work)
        many, wall_n = _run(nproc, [*train, "experiment=train_n", f"network.checkpoint={ckpt}"], threads, work)
        result["train"] = {"seconds_1": one["timings_s"]["train"], f"seconds_{nproc}": many["timings_s"]["train"],
                           "wall_1": wall1, f"wall_{nproc}": wall_n, "device": one["device"],
                           "speedup": one["timings_s"]["train"] / many["timings_s"]["train"]}
        test = ["--config", str(test_config), f"network.checkpoint={ckpt}", "cache_dir=null", "report=false",
                "postprocessors=[msp]", "output_dir=results", *overrides]
        one, wall1 = _run(1, [*test, "experiment=test_1"], threads, work)
        many, wall_n = _run(nproc, [*test, "experiment=test_n"], threads, work)
        result["test_ood"] = {"seconds_1": one["timings_s"]["forward"], f"seconds_{nproc}": many["timings_s"]["forward"],
                              "wall_1": wall1, f"wall_{nproc}": wall_n, "device": one["device"],
                              "speedup": one["timings_s"]["forward"] / many["timings_s"]["forward"]}
    return result


def print_report(r: dict) -> None:
    n = r["nproc"]
    print(f"\n== bench ddp: {n} processes vs 1 on {r['train']['device']} "
          f"({r['threads_per_process']} thread(s) per process) ==")
    for what, label in (("train", f"train ({r['epochs']} epochs, timings_s.train)"),
                        ("test_ood", "test_ood forward passes (timings_s.forward)")):
        x = r[what]
        print(f"{label}: 1 process {x['seconds_1']:.2f} s, {n} processes {x[f'seconds_{n}']:.2f} s "
              f"-> speed-up {x['speedup']:.2f}x (wall with start-up {x['wall_1']:.1f} s vs {x[f'wall_{n}']:.1f} s)")


def main(argv) -> int:
    parser = argparse.ArgumentParser(prog="openood-ext bench ddp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, default=2, help="processes of the data-parallel runs (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per process, both runs (default 1)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    parser.add_argument("--train-config", type=Path, default=TRAIN_CONFIG, help="train pipeline config")
    parser.add_argument("--test-config", type=Path, default=TEST_CONFIG, help="test_ood pipeline config")
    parser.add_argument("-o", "--output", help="also write the figures as JSON here")
    args, rest = parser.parse_known_args(argv)
    overrides = [r for r in rest if r != "--debug"]
    bad = [r for r in overrides if "=" not in r]
    if bad:
        raise ConfigError(f"bench ddp: unknown argument(s) {' '.join(bad)} (expected key=value overrides)")
    if args.threads < 1 or args.epochs < 1:
        raise ConfigError("bench ddp: --threads and --epochs must be >= 1")
    result = bench_ddp(args.nproc, args.threads, args.epochs, args.train_config.resolve(),
                       args.test_config.resolve(), overrides)
    print_report(result)
    if args.output:
        write_json(args.output, result)
    return 0
