"""scripts/gpu_acceptance.sh on a machine without a CUDA device: one line saying so, nothing run or written."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO


def test_without_cuda_the_acceptance_script_stops_at_once_with_one_line(tmp_path):
    out = tmp_path / "acceptance"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OUT": str(out), "PYTHON": sys.executable,
           "GPU_ACCEPTANCE_DEVICE": "cuda"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_acceptance.sh")], env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["gpu_acceptance: no CUDA device is present; nothing was run "
                                        "(GPU_ACCEPTANCE_DEVICE=cpu rehearses on the CPU)"]
    assert not out.exists()


def test_main_job_on_the_device_in_mixed_precision(device, tmp_path):
    """The main job (training, then test_ood with its postprocessors and Gram's taps) on the device in bf16 with
    channels_last, as a GPU user runs it. The cpu id is tests/end_to_end/test_main_job.py (not run twice)."""
    import pandas as pd
    import pytest

    from conftest import MAIN_CONFIG, cli
    if device.type == "cpu":
        pytest.skip("the CPU main job is test_main_job.py")
    proc = cli("--config", str(MAIN_CONFIG), f"device={device}", "precision=bf16", "channels_last=true",
               "+trainer.precision=bf16", "+trainer.channels_last=true", "trainer.epochs=5",
               "postprocessors=[msp,ebo,gram,mds]", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = pd.read_csv(tmp_path / "results" / "digits_digits_cnn_test_ood_s0" / "metrics.csv")
    aurocs = metrics[metrics.metric == "auroc"].value
    assert len(aurocs) and aurocs.notna().all() and (aurocs > 0.5).all()
