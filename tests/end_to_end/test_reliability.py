"""Resume after an interruption gives the weights of an uninterrupted run; signals; atomic outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import PLUGIN_SRC, REPO
from openood_ext.config import load_config
from openood_ext.errors import OpenOODError
from openood_ext.runner import resume_config, run_config
from openood_ext.utils.interrupts import RunInterrupted, critical, graceful_interrupts
from openood_ext.utils.io import write_text

TRAIN_CONFIG = REPO / "configs" / "pipelines" / "train.yml"


def train_cfg(tmp_path, name: str, epochs: int = 4):
    return load_config([TRAIN_CONFIG], [f"trainer.epochs={epochs}", f"output_dir={tmp_path / 'results'}",
                                        f"experiment={name}", f"network.checkpoint={tmp_path / name}.pt",
                                        f"benchmark.data_root={tmp_path / 'data'}"])


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_resume_after_exception_matches_uninterrupted_run(tmp_path, monkeypatch):
    run_config(train_cfg(tmp_path, "straight"))

    import openood_ext.trainers.engine as engine_mod
    real_save = engine_mod.save_training_state

    def save_then_fail(path, blob):
        real_save(path, blob)
        if blob["epoch"] == 2:
            raise RuntimeError("injected failure after epoch 2")

    monkeypatch.setattr(engine_mod, "save_training_state", save_then_fail)
    with pytest.raises(RuntimeError, match="injected"):
        run_config(train_cfg(tmp_path, "broken"))
    partial = tmp_path / "results" / "broken.partial"
    record = json.loads((partial / "run.json").read_text())
    assert record["status"] == "failed" and "injected" in record["error"]
    assert not (tmp_path / "results" / "broken").exists()
    assert torch.load(partial / "last.pt", weights_only=False)["epoch"] == 2

    monkeypatch.setattr(engine_mod, "save_training_state", real_save)
    run_config(resume_config(tmp_path / "results" / "broken"))
    assert_same_weights(tmp_path / "straight.pt", tmp_path / "broken.pt")
    assert json.loads((tmp_path / "results/broken/run.json").read_text())["status"] == "complete"
    assert not partial.exists()


def _train_subprocess(tmp_path, name, epochs, *extra):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(PLUGIN_SRC)])}
    args = [sys.executable, str(REPO / "main.py"), *extra]
    if not extra:
        args += ["--config", str(TRAIN_CONFIG)]
    args += [f"trainer.epochs={epochs}", f"output_dir={tmp_path / 'results'}", f"experiment={name}",
             f"network.checkpoint={tmp_path / name}.pt", f"benchmark.data_root={tmp_path / 'data'}"]
    return subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)


def test_sigterm_leaves_consistent_run_and_resume_matches(tmp_path):
    epochs = 12
    straight = _train_subprocess(tmp_path, "straight", epochs)
    assert straight.wait(timeout=300) == 0, straight.stderr.read()

    proc = _train_subprocess(tmp_path, "killed", epochs)
    state = tmp_path / "results" / "killed.partial" / "last.pt"
    deadline = time.time() + 240
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert state.exists(), proc.stderr.read() if proc.poll() is not None else "no epoch state written"
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    stderr = proc.stderr.read()
    if code == 0:
        pytest.skip("training finished before SIGTERM arrived (machine too fast for this timing)")
    assert code == 130, stderr
    assert "SIGTERM" in stderr
    record = json.loads((tmp_path / "results/killed.partial/run.json").read_text())
    assert record["status"] == "interrupted"
    finished = torch.load(state, weights_only=False)["epoch"]
    assert 1 <= finished < epochs

    resume = subprocess.run([sys.executable, str(REPO / "main.py"), "--resume", str(tmp_path / "results/killed")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL)
    assert resume.returncode == 0, resume.stderr
    assert f"after epoch {finished}" in resume.stderr
    assert_same_weights(tmp_path / "straight.pt", tmp_path / "killed.pt")


def test_same_seed_same_metrics(tmp_path, digits_checkpoint):
    from conftest import MAIN_CONFIG, cli
    for name in ("a", "b"):
        proc = cli("--config", str(MAIN_CONFIG), f"network.checkpoint={digits_checkpoint}", f"experiment={name}",
                   "cache_dir=null", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "results/a/metrics.csv").read_text() == (tmp_path / "results/b/metrics.csv").read_text()


def test_training_is_deterministic_on_cpu(tmp_path):
    run_config(train_cfg(tmp_path, "one", epochs=2))
    run_config(train_cfg(tmp_path, "two", epochs=2))
    assert_same_weights(tmp_path / "one.pt", tmp_path / "two.pt")


def test_interrupt_inside_critical_section_waits_for_the_write(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RunInterrupted):
        with graceful_interrupts():
            with critical():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # the signal has arrived, but is deferred
                write_text(target, "complete")
            pytest.fail("the deferred interrupt should be raised when the critical section ends")
    assert target.read_text() == "complete"


def test_failed_write_keeps_previous_content(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    write_text(target, "old")

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OpenOODError, match="could not write .*metrics.json: No space left on device"):
        write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left behind


def test_second_run_of_same_experiment_is_refused_while_first_runs(tmp_path):
    from openood_ext.errors import ConfigError
    from openood_ext.pipelines.context import RunContext
    cfg = train_cfg(tmp_path, "locked")
    with RunContext(cfg):
        with pytest.raises(ConfigError, match="already running"):
            RunContext(cfg)
