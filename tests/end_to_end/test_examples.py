"""The examples run as a user runs them (a subprocess from the repository), on the embedded digits set,
in the default suite so that CI runs every one of them (the two model-zoo examples push a ResNet-18 over
every digits split at 8x8: 12-20 s of CPU each)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO


def run_example(name: str, *args: str, timeout: int = 300) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "examples" / name), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_deploy_detector_example(digits_run, tmp_path):
    out = run_example("deploy_detector.py", "--data-root", str(digits_run[0] / "data"), "--epochs", "2",
                      "--out", str(tmp_path / "knn.pt"))
    assert (tmp_path / "knn.pt").is_file()
    assert "keeps 95 % of ID validation images" in out and "photos" in out


def test_evaluate_torchvision_model_example(digits_run, tmp_path):
    out = run_example("evaluate_torchvision_model.py", "--data-root", str(digits_run[0] / "data"), "--image-size",
                      "8", "--postprocessors", "msp,knn", "--skip-cifar10", "--out", str(tmp_path / "run"))
    assert "farood" in out and "AUROC" in out
    assert (tmp_path / "run" / "metrics.csv").is_file() and (tmp_path / "run" / "report.html").is_file()


def test_evaluate_timm_model_example(digits_run):
    pytest.importorskip("timm")
    out = run_example("evaluate_timm_model.py", "--data-root", str(digits_run[0] / "data"), "--image-size", "8",
                      "--postprocessors", "msp,knn")
    assert "farood" in out and "features = input of 'fc'" in out
