"""The main job on the embedded digits benchmark, end to end through the command line."""

from __future__ import annotations

import json

import pandas as pd

from conftest import MAIN_CONFIG, REPO, cli
from openood_ext.datasets.digits import IMGLIST_FILES, generate_digits

RUN = "results/digits_digits_cnn_test_ood_s0"


def test_main_job_trains_then_reports_every_postprocessor(digits_run):
    work, proc = digits_run
    assert "checkpoint checkpoints/digits_cnn_s0.pt is missing: training the network first" in proc.stderr
    for pp in ("msp", "ebo", "knn", "hsc"):
        assert any(line.startswith(pp + " ") for line in proc.stdout.splitlines()), proc.stdout
    run = work / RUN
    for name in ("config.yaml", "metrics.csv", "metrics.json", "run.json", "log.txt",
                 "scores/msp.npz", "scores/knn.npz"):
        assert (run / name).is_file(), name
    metrics = pd.read_csv(run / "metrics.csv")
    acc = metrics[(metrics.metric == "accuracy")].value
    assert (acc > 0.95).all()  # a real classifier, not chance (1/6)
    knn_near = metrics.query("postprocessor == 'knn' and dataset == 'nearood' and metric == 'auroc'").value.item()
    msp_far = metrics.query("postprocessor == 'msp' and dataset == 'farood' and metric == 'auroc'").value.item()
    assert knn_near > 0.9 and msp_far > 0.8
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["postprocessors"]["knn"]["hyperparameters"]["k"] == 10
    assert set(summary["postprocessors"]["msp"]["groups"]) == {"near", "far"}
    assert summary["skipped_sets"] == {}
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "complete" and record["seed"] == 0 and record["forward_passes"] == 6


def test_second_run_reads_the_cache_and_does_no_forward_pass(digits_run):
    work, first = digits_run
    proc = cli("--config", str(MAIN_CONFIG), "experiment=second", cwd=work)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((work / "results/second/run.json").read_text())
    assert record["forward_passes"] == 0 and record["cache_hits"] == 6
    assert "training" not in proc.stderr
    first_metrics = pd.read_csv(work / RUN / "metrics.csv")
    second_metrics = pd.read_csv(work / "results/second/metrics.csv")
    pd.testing.assert_frame_equal(first_metrics, second_metrics)


def test_postprocessor_override_and_plugin_from_config(digits_run, digits_checkpoint, tmp_path):
    proc = cli("--config", str(MAIN_CONFIG), f"network.checkpoint={digits_checkpoint}",
               "postprocessors=[msp,demo_neg_msp]", "plugins=[openood_ext_demo_plugin.config_plugin]",
               "cache_dir=null", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics = pd.read_csv(tmp_path / RUN / "metrics.csv")
    assert set(metrics.postprocessor) == {"msp", "demo_neg_msp"}
    auroc = metrics.query("metric == 'auroc' and dataset == 'nearood'").set_index("postprocessor").value
    assert abs(auroc["msp"] + auroc["demo_neg_msp"] - 1) < 1e-9  # inverted score, mirrored AUROC


def test_entry_point_plugin_via_cli(digits_checkpoint, tmp_path):
    from conftest import install_demo_plugin, PLUGIN_SRC
    import os
    site = install_demo_plugin(tmp_path / "site")
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), str(PLUGIN_SRC), str(site)])}
    listing = cli("list", "postprocessors", "demo_*", module="openood_ext.cli", cwd=tmp_path, env=env)
    assert listing.returncode == 0, listing.stderr
    names = [line.split()[1] for line in listing.stdout.splitlines()]
    assert names == ["demo_feature_norm", "demo_maxlogit"]
    proc = cli("--config", str(MAIN_CONFIG), f"network.checkpoint={digits_checkpoint}",
               "postprocessors=[{name: demo_maxlogit, offset: 1.0}]", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "demo_maxlogit" in proc.stdout


def test_list_command_describes_parts(tmp_path):
    proc = cli("list", module="openood_ext.cli", cwd=tmp_path)
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert any(line.split()[:2] == ["postprocessors", "knn"] and "nearest" in line.lower() for line in lines)
    assert any(line.split()[:2] == ["benchmarks", "digits"] for line in lines)
    assert any(line.split()[:2] == ["pipelines", "test_ood"] for line in lines)


def test_committed_digits_imglists_match_the_generator(tmp_path):
    lists = generate_digits(tmp_path)
    for key, fname in IMGLIST_FILES.items():
        committed = (REPO / "benchmark_imglist" / "digits" / fname).read_text().splitlines()
        assert committed == lists[key], fname
        assert all((tmp_path / line.rsplit(" ", 1)[0]).is_file() for line in committed[:20])
