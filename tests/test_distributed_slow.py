"""torchrun end to end on the CPU (gloo, 2 processes; slow): train, test_ood equal to one process, a rank
killed mid-training (interrupted run, resume completes it). Run with ``python -m pytest -m slow``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, cli
from ad_helpers import bench_spec, labelled, make_cfg  # noqa: F401  (labelled: the tiny AD data fixture)

from openood_ext.distributed import free_port

pytestmark = pytest.mark.slow

TRAIN = REPO / "configs" / "pipelines" / "train.yml"
TEST_OOD = REPO / "configs" / "pipelines" / "test_ood.yml"


def torchrun_cmd(*args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(REPO / "main.py"), *args]


def env_for(cwd: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OPENOOD_EXT_DATA": str(cwd / "data"),
            "OPENOOD_DIST_TIMEOUT_S": "120", "OMP_NUM_THREADS": "1"}


def torchrun(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_cmd(*args), cwd=cwd, env=env_for(cwd), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, check=False)


@pytest.fixture(scope="module")
def ddp_trained(tmp_path_factory):
    """A digits network trained by 2 processes (3 epochs): (workdir, checkpoint, CompletedProcess)."""
    work = tmp_path_factory.mktemp("ddp_train")
    ckpt = work / "checkpoints" / "ddp_train.pt"
    proc = torchrun("--config", str(TRAIN), "trainer.epochs=3", "experiment=ddp_train", f"network.checkpoint={ckpt}",
                    cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, ckpt, proc


def test_torchrun_train_writes_once_from_rank_0(ddp_trained):
    work, ckpt, proc = ddp_trained
    assert ckpt.is_file()
    run = json.loads((work / "results" / "ddp_train" / "run.json").read_text())
    assert run["status"] == "complete" and run["processes"] == 2
    history = json.loads((work / "results" / "ddp_train" / "history.json").read_text())
    assert [r["epoch"] for r in (history["epochs"] if isinstance(history, dict) else history)] == [1, 2, 3]
    assert proc.stderr.count("epoch 1/3:") == 1  # only rank 0 logs
    assert "data parallel: 2 processes" in proc.stderr
    assert "data backend: tensor" in proc.stderr and "rank 0 of 2 reads its share" in proc.stderr


def test_torchrun_test_ood_equals_one_process(ddp_trained):
    work, ckpt, _ = ddp_trained
    common = ("--config", str(TEST_OOD), f"network.checkpoint={ckpt}", "cache_dir=null", "report=false")
    one = cli(*common, "experiment=one", cwd=work)
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun(*common, "experiment=two", cwd=work)
    assert two.returncode == 0, two.stderr[-3000:]
    a = pd.read_csv(work / "results" / "one" / "metrics.csv")
    b = pd.read_csv(work / "results" / "two" / "metrics.csv")
    assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0
    numeric = a.select_dtypes("number").columns
    pd.testing.assert_frame_equal(a.drop(columns=numeric), b.drop(columns=numeric))
    assert (a[numeric] - b[numeric]).abs().max().max() < 1e-4  # metrics in %, float tolerance
    assert two.stdout.count("== digits: ID accuracy") == 1  # rank 0 prints the table once
    assert json.loads((work / "results" / "two" / "run.json").read_text())["processes"] == 2


def test_killed_rank_leaves_interrupted_run_that_resumes(tmp_path):
    args = ("--config", str(TRAIN), "trainer.epochs=60", "experiment=killed",
            f"network.checkpoint={tmp_path / 'killed.pt'}")
    proc = subprocess.Popen(torchrun_cmd(*args), cwd=tmp_path, env=env_for(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, start_new_session=True)
    partial = tmp_path / "results" / "killed.partial"
    deadline = time.time() + 300
    while not (partial / "last.pt").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert (partial / "last.pt").is_file(), "training never saved a state"
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False).stdout.split()
    assert len(workers) == 2
    os.kill(int(workers[-1]), signal.SIGKILL)  # one rank dies mid-run
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    run = json.loads((partial / "run.json").read_text())
    assert run["status"] == "interrupted", err[-2000:]
    resumed = torchrun("--resume", str(tmp_path / "results" / "killed"), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming training from" in resumed.stderr
    run = json.loads((tmp_path / "results" / "killed" / "run.json").read_text())
    assert run["status"] == "complete" and run["processes"] == 2


def test_torchrun_ad_protocol_trains_on_both_ranks_and_writes_from_rank_0(labelled, tmp_path):  # noqa: F811
    from omegaconf import OmegaConf
    cfg = make_cfg(tmp_path, bench_spec(labelled), {"classes": [0, 1], "train_limit": 6}, experiment="ad_ddp")
    OmegaConf.save(cfg, tmp_path / "ad.yml")
    proc = torchrun("--config", str(tmp_path / "ad.yml"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "results" / "ad_ddp"
    assert json.loads((run_dir / "run.json").read_text())["processes"] == 2
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"0", "1"}
    for c in (0, 1):
        cell = run_dir / f"normal_{c}" / "seed_0"
        assert (cell / "result.json").is_file() and (cell / "train_subset.txt").is_file()
        assert json.loads((cell / "result.json").read_text())["n_train"] == 6
    assert proc.stderr.count("class 0 seed 0: AUROC") == 1
