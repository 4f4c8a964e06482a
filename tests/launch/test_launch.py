"""The launcher: local processes, submitit's local/debug executors, a local Ray; the AD cells as jobs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from ad_helpers import bench_spec, labelled  # noqa: F401  (labelled: the tiny 3-class AD set fixture)

from openood_ext.errors import ConfigError
from openood_ext.launch import Job, JobsFailed, launch, launcher_options

# A job that records when it ran, prints a line, and exits with the status it is given.
SCRIPT = ("import json, sys, time; t0 = time.time(); time.sleep(0.5); print('hello from', sys.argv[1]); "
          "json.dump([t0, time.time()], open(sys.argv[2], 'w')); "
          "print('openood-ext: error: bad thing', file=sys.stderr) if sys.argv[3] != '0' else None; "
          "raise SystemExit(int(sys.argv[3]))")


def jobs_for(tmp_path: Path, codes) -> list[Job]:
    return [Job([sys.executable, "-c", SCRIPT, f"job{i}", str(tmp_path / f"t{i}.json"), str(code)], tmp_path / f"run{i}")
            for i, code in enumerate(codes)]


def check_results(tmp_path, results, codes):
    assert [r.job.name for r in results] == [f"run{i}" for i in range(len(codes))]
    for i, (r, code) in enumerate(zip(results, codes)):
        assert r.returncode == code and r.ok == (code == 0)
        assert r.status == {0: "complete", 130: "interrupted"}.get(code, "failed")
        assert r.error == ("" if code == 0 else "openood-ext: error: bad thing")
        assert f"hello from job{i}" in (tmp_path / f"run{i}.out").read_text()


def test_local_backend_runs_jobs_in_parallel_and_reports_each(tmp_path):
    codes = [0, 3, 130]
    results = launch(jobs_for(tmp_path, codes), backend="local", max_parallel=2)
    check_results(tmp_path, results, codes)
    spans = [json.loads((tmp_path / f"t{i}.json").read_text()) for i in range(3)]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]  # the first two overlapped
    assert spans[2][0] >= min(spans[0][1], spans[1][1]) - 0.05  # the third waited for a free slot


def test_local_backend_with_one_slot_runs_one_at_a_time(tmp_path):
    launch(jobs_for(tmp_path, [0, 0]), max_parallel=1)
    a, b = (json.loads((tmp_path / f"t{i}.json").read_text()) for i in range(2))
    assert b[0] >= a[1] - 0.05


@pytest.mark.parametrize("cluster", ["debug", "local"])
def test_submitit_backend(tmp_path, cluster):
    pytest.importorskip("submitit")
    codes = [0, 2]
    results = launch(jobs_for(tmp_path, codes), backend="submitit", max_parallel=2, cluster=cluster,
                     folder=tmp_path / "submitit", timeout_min=5)
    check_results(tmp_path, results, codes)


@pytest.mark.slow  # starting a local Ray takes 5-15 s
def test_ray_backend(tmp_path):
    ray = pytest.importorskip("ray")
    codes = [0, 5]
    try:
        results = launch(jobs_for(tmp_path, codes), backend="ray", max_parallel=2,
                         init_kwargs={"num_cpus": 2, "include_dashboard": False})
    finally:
        ray.shutdown()
    check_results(tmp_path, results, codes)


def test_bad_launcher_settings_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="ad.launcher.backend: expected one of local, submitit, ray, got 'slurm'"):
        launcher_options({"backend": "slurm"}, "ad.launcher")
    with pytest.raises(ConfigError, match=r"ad.launcher.jobs: expected int >= 1, got 0"):
        launcher_options({"jobs": 0}, "ad.launcher")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['cluster'\] for backend local"):
        launcher_options({"backend": "local", "cluster": "debug"}, "ad.launcher")
    assert launcher_options({"backend": "ray", "jobs": 3, "num_cpus_per_job": 2}, "x") == \
        {"backend": "ray", "max_parallel": 3, "num_cpus_per_job": 2}
    assert launcher_options(None, "x") is None
    same = [Job(["true"], tmp_path / "a"), Job(["true"], tmp_path / "a", name="other")]
    with pytest.raises(ConfigError, match="share the run directory"):
        launch(same)


# ---------------------------------------------------------------------------------------------- AD cells
def ad_config(tmp: Path, root: Path, experiment: str, **ad) -> OmegaConf:
    return OmegaConf.create({
        "pipeline": "ad", "experiment": experiment, "seed": 0, "device": "cpu", "output_dir": str(tmp / "results"),
        "num_workers": 0, "batch_size": 64,
        "benchmark": bench_spec(root),
        "network": {"name": "fcdd_cnn28", "in_channels": 1, "image_size": 28},
        "trainer": {"name": "fcdd", "supervise_mode": "noise", "epochs": 1, "batch_size": 16,
                    "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True},
                    "scheduler": {"name": "constant"}, "outliers": {"name": "confetti", "mode": "noise"}},
        "ad": {"heatmaps": 0, "classes": [0, 1], "seeds": 1, **ad}})


def test_ad_cells_as_two_local_jobs_equal_the_in_process_loop(tmp_path, labelled):
    from openood_ext.runner import run_config
    inline = run_config(ad_config(tmp_path, labelled, "inline"))
    jobs = run_config(ad_config(tmp_path, labelled, "jobs", launcher={"backend": "local", "jobs": 2}))
    assert jobs["per_class"] == inline["per_class"] and jobs["auroc_mean"] == inline["auroc_mean"]
    run = Path(jobs["run_dir"])
    for cls in (0, 1):
        cell = run / f"normal_{cls}" / "seed_0"
        a = np.load(cell / "scores.npz")["scores"]
        b = np.load(Path(inline["run_dir"]) / f"normal_{cls}" / "seed_0" / "scores.npz")["scores"]
        np.testing.assert_array_equal(a, b)  # same seed, same cell code: bit-identical in another process
        assert (cell / "log.txt").is_file() and (cell.parent / "seed_0.out").is_file()
    assert "AD cells: 2 of 2 as jobs on backend local, 2 at a time" in (run / "log.txt").read_text()


@pytest.mark.slow  # three more cell processes
def test_a_failed_cell_job_stops_the_run_and_resume_runs_only_the_rest(tmp_path, labelled, monkeypatch):
    from openood_ext.pipelines.ad import jobs as ad_cells
    from openood_ext.runner import resume_config, run_config
    real = ad_cells.launch

    def fail_class_1(jobs, **opts):  # class 1's job gets a command that exits 2 like a user error
        for job in jobs:
            if job.name.startswith("normal_1/"):
                job.argv = [sys.executable, "-c", "import sys; print('openood-ext: error: boom', file=sys.stderr); sys.exit(2)"]
        return real(jobs, **opts)

    monkeypatch.setattr(ad_cells, "launch", fail_class_1)
    cfg = ad_config(tmp_path, labelled, "failing", launcher={"backend": "local", "jobs": 2})
    with pytest.raises(JobsFailed, match=r"1 of 2 cell jobs did not complete; first: normal_1/seed_0 failed: openood-ext: error: boom"):
        run_config(cfg)
    partial = tmp_path / "results" / "failing.partial"
    assert (partial / "normal_0" / "seed_0" / "result.json").is_file()
    assert json.loads((partial / "run.json").read_text())["status"] == "failed"
    monkeypatch.setattr(ad_cells, "launch", real)
    launched = []
    monkeypatch.setattr(ad_cells, "launch", lambda jobs, **o: launched.extend(j.name for j in jobs) or real(jobs, **o))
    out = run_config(resume_config(partial))
    assert launched == ["normal_1/seed_0"] and set(out["per_class"]) == {"0", "1"}


# ---------------------------------------------------------------------------------------------- GPUs
GPU_SCRIPT = ("import os, sys, time; time.sleep(0.3); "
              "print('gpu', os.environ.get('CUDA_VISIBLE_DEVICES', '-'), 'job', sys.argv[1])")


def gpu_jobs(tmp_path, n, env=None):
    return [Job([sys.executable, "-c", GPU_SCRIPT, str(i)], tmp_path / f"g{i}", env=dict(env or {})) for i in range(n)]


def seen_gpus(tmp_path, n):
    return [(tmp_path / f"g{i}.out").read_text().split()[1] for i in range(n)]


def test_parallel_local_jobs_are_spread_over_the_visible_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # a fake machine: two GPUs, numbered as the user exposed them
    launch(gpu_jobs(tmp_path, 4), max_parallel=4)
    assert seen_gpus(tmp_path, 4) == ["3", "5", "3", "5"]


def test_gpus_option_and_a_jobs_own_choice(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    jobs = gpu_jobs(tmp_path, 3)
    jobs[1].env["CUDA_VISIBLE_DEVICES"] = "7"
    launch(jobs, **launcher_options({"backend": "local", "jobs": 3, "gpus": [0, 1, 2]}, "launcher"))
    assert seen_gpus(tmp_path, 3) == ["0", "7", "1"]


def test_gpu_slots_reuse_the_least_busy_gpu_and_none_without_gpus():
    from openood_ext.launch.backends import GpuSlots
    slots = GpuSlots(["0", "1"])
    a, b, c = slots.take(), slots.take(), slots.take()
    assert (a, b, c) == ("0", "1", "0")
    slots.give_back(b)
    slots.give_back(a)
    assert slots.take() == "1"  # GPU 0 still runs one job, GPU 1 none
    assert GpuSlots([]).take() is None


def test_no_gpu_leaves_the_environment_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU visible: the children inherit that, unchanged
    launch(gpu_jobs(tmp_path, 2), max_parallel=2)
    assert all((tmp_path / f"g{i}.out").read_text().startswith("gpu  job") for i in range(2))
