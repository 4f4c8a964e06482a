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
