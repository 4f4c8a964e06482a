"""Leaderboard aggregation from constructed run directories."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO
from openood_ext.leaderboard import build_leaderboard, main, parse_mean, render


def make_run(root: Path, name: str, seed: int, values: dict, trainer="base", network="resnet18_32x32",
             status="complete", partial=False, epochs=100):
    run = root / name
    (run / "scores").mkdir(parents=True)
    (run / "config.yaml").write_text(
        f"benchmark: {{name: cifar10}}\nnetwork: {{name: {network}}}\ntrainer: {{name: {trainer}}}\nseed: {seed}\n")
    (run / "run.json").write_text(json.dumps({"status": status, "seed": seed, "checkpoint_meta": {"epochs": epochs}}))
    rows = []
    for pp, (acc, near, far) in values.items():
        rows += [(pp, "id_test", "id", "accuracy", acc, False), (pp, "nearood", "near", "auroc", near, partial),
                 (pp, "farood", "far", "auroc", far, False), (pp, "nearood", "near", "fpr95", 1 - near, partial),
                 (pp, "farood", "far", "fpr95", 1 - far, False)]
    pd.DataFrame(rows, columns=["postprocessor", "dataset", "group", "metric", "value", "partial"]).to_csv(
        run / "metrics.csv", index=False)
    return run


def test_mean_std_sorting_and_columns(tmp_path):
    make_run(tmp_path, "s0", 0, {"msp": (0.95, 0.88, 0.90), "knn": (0.95, 0.90, 0.93)})
    make_run(tmp_path, "s1", 1, {"msp": (0.93, 0.86, 0.92), "knn": (0.93, 0.92, 0.95)})
    table = build_leaderboard(tmp_path)
    assert list(table.columns[:9]) == ["Benchmark", "Training", "Postprocessor", "Near-OOD_AUROC", "Far-OOD_AUROC",
                                       "ID_Accuracy", "Outlier_Data", "Arch", "Additional_Description"]
    assert list(table.Postprocessor) == ["knn", "msp"]  # sorted by near-OOD AUROC
    knn = table.iloc[0]
    assert knn["Near-OOD_AUROC"] == "91.00 ± 1.00" and knn["ID_Accuracy"] == "94.00 ± 1.00"
    assert knn["Near-OOD_FPR95"] == "9.00 ± 1.00" and knn["Seeds"] == 2
    assert knn["Training"] == "base" and knn["Arch"] == "resnet18_32x32" and knn["Outlier_Data"] == "none"
    assert knn["Additional_Description"] == "100 epochs"


def test_single_seed_shows_mean_only_and_partial_is_flagged(tmp_path):
    make_run(tmp_path, "only", 0, {"ebo": (0.9, 0.8, 0.85)}, partial=True)
    row = build_leaderboard(tmp_path).iloc[0]
    assert row["Near-OOD_AUROC"] == "80.00" and "partial" in row["Additional_Description"]


def test_incomplete_and_corrupt_runs_are_skipped_with_warning(tmp_path, capsys):
    make_run(tmp_path, "good", 0, {"msp": (0.9, 0.8, 0.85)})
    make_run(tmp_path, "interrupted", 1, {"msp": (0.1, 0.1, 0.1)}, status="interrupted")
    bad = make_run(tmp_path, "corrupt", 2, {"msp": (0.1, 0.1, 0.1)})
    (bad / "metrics.csv").write_text("not,a\nreal\"csv")
    broken = make_run(tmp_path, "broken_json", 3, {"msp": (0.1, 0.1, 0.1)})
    (broken / "run.json").write_text("{")
    make_run(tmp_path, "x.partial", 4, {"msp": (0.1, 0.1, 0.1)})
    table = build_leaderboard(tmp_path)
    err = capsys.readouterr().err
    assert len(table) == 1 and table.iloc[0]["Seeds"] == 1
    for name in ("interrupted", "corrupt", "broken_json"):
        assert name in err
    assert "x.partial" not in err  # work directories of running/interrupted runs are not runs


def test_reference_deltas(tmp_path):
    make_run(tmp_path, "s0", 0, {"msp": (0.95, 0.89, 0.91), "residual": (0.95, 0.8, 0.8)})
    table = build_leaderboard(tmp_path, REPO / "configs/reference/openood_v1.5_cifar10.csv")
    msp = table.set_index("Postprocessor").loc["msp"]
    assert msp["Ref_Near-OOD_AUROC"] == "88.03 ± 0.25"
    assert msp["Delta_Near-OOD_AUROC"] == "+0.97" and msp["Delta_Far-OOD_AUROC"] == "+0.27"
    assert msp["Delta_ID_Accuracy"] == "-0.06"
    residual = table.set_index("Postprocessor").loc["residual"]
    assert residual["Ref_Near-OOD_AUROC"] == "" and residual["Delta_Near-OOD_AUROC"] == ""


def test_cli_writes_formats_atomically(tmp_path):
    make_run(tmp_path / "results", "s0", 0, {"msp": (0.95, 0.89, 0.91)})
    for fmt in ("csv", "md", "html"):
        out = tmp_path / f"lb.{fmt}"
        assert main([str(tmp_path / "results"), "-o", str(out)]) == 0
        text = out.read_text()
        assert "msp" in text and "89.00" in text
    assert pd.read_csv(tmp_path / "lb.csv").Postprocessor.tolist() == ["msp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lb.csv", "lb.html", "lb.md", "results"]
    assert parse_mean("88.03 ± 0.25") == pytest.approx(88.03)
    with pytest.raises(Exception, match="format"):
        render(pd.DataFrame(), "xls")
