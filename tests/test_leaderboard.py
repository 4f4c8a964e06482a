"""Leaderboard aggregation from constructed run directories."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO
from openood_ext.cli import main as cli_main
from openood_ext.errors import DataError
from openood_ext.leaderboard import build_leaderboard, main, parse_mean, render

REFERENCE = REPO / "configs/reference/openood_v1.5_cifar10.csv"


def make_run(root: Path, name: str, seed: int, values: dict, trainer="base", network="resnet18_32x32",
             status="complete", partial=False, epochs=100, benchmark="cifar10", synthesizer=None):
    """A run directory as test_ood writes it; ``values``: postprocessor -> (ID acc, near AUROC, far AUROC)."""
    run = root / name
    (run / "scores").mkdir(parents=True)
    lines = [f"benchmark: {{name: {benchmark}}}", f"network: {{name: {network}}}", f"seed: {seed}"]
    if trainer:
        lines.append(f"trainer: {{name: {trainer}}}")
    if synthesizer:
        lines.append(f"synthesizer: {{name: {synthesizer}}}")
    (run / "config.yaml").write_text("\n".join(lines) + "\n")
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
    make_run(tmp_path, "s0", 0, {"msp": (0.95, 0.88, 0.90), "knn": (0.95, 0.90, 0.93), "ebo": (0.95, 0.87, 0.5)})
    make_run(tmp_path, "s1", 1, {"msp": (0.93, 0.86, 0.92), "knn": (0.93, 0.92, 0.95), "ebo": (0.93, 0.89, 0.5)})
    make_run(tmp_path, "nested/deeper/s2", 2, {"msp": (0.94, 0.87, 0.91)})  # found recursively
    table = build_leaderboard(tmp_path)
    assert list(table.columns) == ["Benchmark", "Training", "Postprocessor", "Hyperparameters", "Near-OOD_AUROC",
                                   "Far-OOD_AUROC", "ID_Accuracy", "Outlier_Data", "Arch", "Additional_Description",
                                   "Near-OOD_FPR95", "Far-OOD_FPR95", "Seeds", "Runs"]
    # sorted by near-OOD AUROC: knn 91 > ebo 88 > msp 87
    assert list(table.Postprocessor) == ["knn", "ebo", "msp"]
    knn = table.iloc[0]
    assert knn["Near-OOD_AUROC"] == "91.00 ± 1.00" and knn["ID_Accuracy"] == "94.00 ± 1.00"
    assert knn["Near-OOD_FPR95"] == "9.00 ± 1.00" and knn["Far-OOD_AUROC"] == "94.00 ± 1.00" and knn["Seeds"] == 2
    assert knn["Training"] == "base" and knn["Arch"] == "resnet18_32x32" and knn["Outlier_Data"] == "none"
    assert knn["Additional_Description"] == "100 epochs" and knn["Benchmark"] == "cifar10"
    msp = table.iloc[2]  # three seeds, population std: values 88, 86, 87 -> 87.00 ± 0.82
    assert msp["Near-OOD_AUROC"] == "87.00 ± 0.82" and msp["Seeds"] == 3


def test_rows_are_split_by_training_outliers_network_epochs_and_benchmark(tmp_path):
    make_run(tmp_path, "a", 0, {"msp": (0.9, 0.80, 0.8)})
    make_run(tmp_path, "b", 0, {"msp": (0.9, 0.81, 0.8)}, trainer="oe", synthesizer="npos")
    make_run(tmp_path, "c", 0, {"msp": (0.9, 0.82, 0.8)}, network="lenet")
    make_run(tmp_path, "d", 0, {"msp": (0.9, 0.83, 0.8)}, epochs=300)
    make_run(tmp_path, "e", 0, {"msp": (0.9, 0.84, 0.8)}, benchmark="cifar100")
    make_run(tmp_path, "f", 0, {"msp": (0.9, 0.85, 0.8)}, trainer=None)
    g = make_run(tmp_path, "g", 0, {"msp": (0.9, 0.86, 0.8)}, trainer=None)
    (g / "config.yaml").write_text("benchmark: {name: cifar10}\nnetwork: {name: resnet18_32x32, width: 16}\n"
                                   "trainer: {name: oe, outlier_data: {name: tin597, root: data}}\n")
    table = build_leaderboard(tmp_path)
    assert len(table) == 7 and (table.Seeds == 1).all()
    assert table.iloc[0][["Training", "Outlier_Data", "Arch"]].tolist() == ["oe", "tin597", "resnet18_32x32 (width 16)"]
    by_near = table.set_index("Near-OOD_AUROC")
    assert by_near.loc["81.00", "Training"] == "oe" and by_near.loc["81.00", "Outlier_Data"] == "npos"
    assert by_near.loc["82.00", "Arch"] == "lenet"
    assert by_near.loc["83.00", "Additional_Description"] == "300 epochs"
    assert by_near.loc["84.00", "Benchmark"] == "cifar100"
    assert by_near.loc["85.00", "Training"] == "pretrained"


def test_single_seed_shows_mean_only_and_partial_is_flagged(tmp_path, capsys):
    make_run(tmp_path, "only", 0, {"ebo": (0.9, 0.8, 0.85), "msp": (0.9, 0.7, 0.8)}, partial=True)
    row = build_leaderboard(tmp_path).iloc[0]
    assert row["Near-OOD_AUROC"] == "80.00" and "partial" in row["Additional_Description"]
    assert capsys.readouterr().err == ""
    make_run(tmp_path, "again", 0, {"ebo": (0.9, 0.8, 0.85), "msp": (0.9, 0.7, 0.8)})
    row = build_leaderboard(tmp_path).iloc[0]  # one seed run twice: still one seed, no "± 0.00"
    assert row["Near-OOD_AUROC"] == "80.00" and row["Seeds"] == 1
    assert "repeated seeds (seed 0 in 2 runs, counted once)" in row["Additional_Description"]
    err = capsys.readouterr().err
    assert err.count("share a seed") == 1 and "again" in err and "only" in err  # once, naming both runs


def test_incomplete_and_corrupt_runs_are_skipped_with_warning(tmp_path, capsys):
    make_run(tmp_path, "good", 0, {"msp": (0.9, 0.8, 0.85)})
    make_run(tmp_path, "interrupted", 1, {"msp": (0.1, 0.1, 0.1)}, status="interrupted")
    bad = make_run(tmp_path, "corrupt", 2, {"msp": (0.1, 0.1, 0.1)})
    (bad / "metrics.csv").write_text("not,a\nreal\"csv")
    broken = make_run(tmp_path, "broken_json", 3, {"msp": (0.1, 0.1, 0.1)})
    (broken / "run.json").write_text("{")
    text = make_run(tmp_path, "text_values", 4, {"msp": (0.1, 0.1, 0.1)})
    (text / "metrics.csv").write_text("postprocessor,dataset,group,metric,value\nmsp,nearood,near,auroc,high\n")
    nojson = make_run(tmp_path, "no_run_json", 5, {"msp": (0.1, 0.1, 0.1)})
    (nojson / "run.json").unlink()
    make_run(tmp_path, "x.partial", 6, {"msp": (0.1, 0.1, 0.1)}, status="failed")
    train = tmp_path / "train_run"  # a complete training run: no metrics, silently not a leaderboard entry
    train.mkdir()
    (train / "run.json").write_text(json.dumps({"status": "complete", "seed": 0}))
    (train / "config.yaml").write_text("seed: 0\n")
    table = build_leaderboard(tmp_path)
    err = capsys.readouterr().err
    assert len(table) == 1 and table.iloc[0]["Seeds"] == 1 and table.iloc[0]["Near-OOD_AUROC"] == "80.00"
    for name in ("interrupted", "corrupt", "broken_json", "text_values", "no_run_json", "x.partial"):
        assert f"{name}:" in err, name
    assert "train_run" not in err and err.count("warning") == 6


def test_reference_deltas_match_on_benchmark_training_postprocessor(tmp_path, capsys):
    make_run(tmp_path, "s0", 0, {"msp": (0.95, 0.89, 0.91), "residual": (0.95, 0.8, 0.8)})
    make_run(tmp_path, "s1", 1, {"msp": (0.95, 0.87, 0.91)})
    make_run(tmp_path, "oe", 0, {"msp": (0.95, 0.87, 0.91)}, trainer="oe")
    make_run(tmp_path, "digits", 0, {"msp": (0.95, 0.99, 0.99)}, benchmark="digits")
    table = build_leaderboard(tmp_path, REFERENCE)
    ref = pd.read_csv(REFERENCE, comment="#", dtype=str).set_index(["Benchmark", "Training", "Postprocessor"])
    published = ref.loc[("cifar10", "base", "msp")]
    msp = table[(table.Postprocessor == "msp") & (table.Training == "base") & (table.Benchmark == "cifar10")].iloc[0]
    assert msp["Near-OOD_AUROC"] == "88.00 ± 1.00"
    assert msp["Ref_Near-OOD_AUROC"] == published["Near-OOD_AUROC"]
    expected = 88.00 - parse_mean(published["Near-OOD_AUROC"])
    assert msp["Delta_Near-OOD_AUROC"] == f"{expected:+.2f}"
    assert msp["Delta_ID_Accuracy"] == f"{95.00 - parse_mean(published['ID_Accuracy']):+.2f}"
    for other in (table[table.Postprocessor == "residual"].iloc[0], table[table.Training == "oe"].iloc[0],
                  table[table.Benchmark == "digits"].iloc[0]):  # no published number: empty, not invented
        assert other["Ref_Near-OOD_AUROC"] == "" and other["Delta_Near-OOD_AUROC"] == ""
    assert "rows of digits get no reference" in capsys.readouterr().err


def test_reference_file_is_complete_and_well_formed():
    ref = pd.read_csv(REFERENCE, comment="#", dtype=str)
    header = [ln for ln in REFERENCE.read_text().splitlines() if ln.startswith("#")]
    assert any("28d3a40b613c452af379e687f46cbb426a9ea36b" in ln for ln in header)  # the cited commit
    assert not ref.duplicated(["Benchmark", "Training", "Postprocessor"]).any()
    for col in ("Near-OOD_AUROC", "Far-OOD_AUROC"):
        means = ref[col].map(parse_mean)
        assert means.between(50, 100).all(), col
    # OpenOOD's table gives no ID accuracy ("/") for methods with their own heads, e.g. NPOS: left empty
    given = ref.ID_Accuracy.dropna()
    assert given.map(parse_mean).between(50, 100).all() and set(ref[ref.ID_Accuracy.isna()].Training) <= {"npos"}
    from openood_ext.postprocessors import POSTPROCESSORS
    assert set(ref.Postprocessor) <= set(POSTPROCESSORS.names())  # registry names, so rows can match


def test_bad_reference_files_are_one_line_errors(tmp_path):
    make_run(tmp_path / "r", "s0", 0, {"msp": (0.95, 0.89, 0.91)})
    missing = tmp_path / "ref1.csv"
    missing.write_text("Training,Postprocessor,Near-OOD_AUROC\nbase,msp,88\n")
    with pytest.raises(DataError, match="missing column"):
        build_leaderboard(tmp_path / "r", missing)
    dup = tmp_path / "ref2.csv"
    dup.write_text("Training,Postprocessor,Near-OOD_AUROC,Far-OOD_AUROC,ID_Accuracy\n"
                   "base,msp,88,90,95\nbase,msp,87,90,95\n")
    with pytest.raises(DataError, match="more than one row"):
        build_leaderboard(tmp_path / "r", dup)
    with pytest.raises(DataError, match="not found"):
        build_leaderboard(tmp_path / "r", tmp_path / "nope.csv")


def test_cli_writes_formats_atomically(tmp_path, capsys):
    make_run(tmp_path / "results", "s0", 0, {"msp": (0.95, 0.89, 0.91)})
    for fmt in ("csv", "md", "html"):
        out = tmp_path / f"lb.{fmt}"
        assert main([str(tmp_path / "results"), "-o", str(out)]) == 0
        text = out.read_text()
        assert "msp" in text and "89.00" in text
    assert pd.read_csv(tmp_path / "lb.csv").Postprocessor.tolist() == ["msp"]
    assert (tmp_path / "lb.md").read_text().startswith("| Benchmark | Training |")
    assert (tmp_path / "lb.html").read_text().startswith("<!doctype html>")
    assert main([str(tmp_path / "results"), "-o", str(tmp_path / "forced.txt"), "--format", "md"]) == 0
    assert (tmp_path / "forced.txt").read_text().startswith("| Benchmark")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forced.txt", "lb.csv", "lb.html", "lb.md", "results"]
    capsys.readouterr()
    assert main([str(tmp_path / "results")]) == 0  # no -o: CSV on stdout
    assert capsys.readouterr().out.startswith("Benchmark,Training,Postprocessor")
    assert parse_mean("88.03 ± 0.25") == pytest.approx(88.03) and parse_mean("") != parse_mean("")
    with pytest.raises(Exception, match="format"):
        render(pd.DataFrame(), "xls")


def test_cli_user_errors_exit_2_with_one_line(tmp_path, capsys):
    assert cli_main(["leaderboard", str(tmp_path / "nothing_here")]) == 2
    err = capsys.readouterr().err.strip()
    assert "results directory not found" in err and "\n" not in err
    assert cli_main(["leaderboard", str(tmp_path), "--format", "xls"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_repeated_seed_counts_once_among_other_seeds(tmp_path, capsys):
    """Seeds 0, 0, 1 with near AUROC 80, 82, 90: seed 0 is (80+82)/2 = 81, then mean of 81 and 90 = 85.50,
    population std 4.50, over 2 seeds (not 3)."""
    make_run(tmp_path, "a", 0, {"msp": (0.9, 0.80, 0.8)})
    make_run(tmp_path, "b", 0, {"msp": (0.9, 0.82, 0.8)})
    make_run(tmp_path, "c", 1, {"msp": (0.9, 0.90, 0.8)})
    row = build_leaderboard(tmp_path).iloc[0]
    assert row["Near-OOD_AUROC"] == "85.50 ± 4.50" and row["Seeds"] == 2
    assert "seed 0 in 2 runs" in capsys.readouterr().err


def test_truncated_metrics_json_is_reported_not_a_bogus_row(tmp_path, capsys):
    """A run whose metrics.json is cut off would lose its effective hyperparameters and land in a row
    of its own; it is skipped with a warning naming the file instead."""
    for name, seed in (("s0", 0), ("s1", 1)):
        run = make_run(tmp_path, name, seed, {"knn": (0.9, 0.8 + seed / 100, 0.8)})
        (run / "metrics.json").write_text(json.dumps({"postprocessors": {"knn": {"hyperparameters": {"k": 50}}}}))
    (tmp_path / "s1" / "metrics.json").write_text('{"postprocessors": {"knn": {"hyperpar')
    table = build_leaderboard(tmp_path)
    err = capsys.readouterr().err
    assert len(table) == 1 and table.iloc[0]["Hyperparameters"] == "k=50" and table.iloc[0]["Seeds"] == 1
    assert f"skipping {tmp_path / 's1'}: metrics.json unreadable" in err and err.count("\n") == 1


def test_header_only_metrics_csv_is_reported(tmp_path, capsys):
    make_run(tmp_path, "s0", 0, {"msp": (0.9, 0.8, 0.8)})
    empty = make_run(tmp_path, "s1", 1, {"msp": (0.9, 0.9, 0.8)})
    (empty / "metrics.csv").write_text("postprocessor,dataset,group,metric,value,partial\n")
    table = build_leaderboard(tmp_path)
    err = capsys.readouterr().err
    assert len(table) == 1 and table.iloc[0]["Seeds"] == 1
    assert f"skipping {empty}: metrics.csv has a header but no rows" in err


def _ad_run(root: Path, name: str, seed: int, seeds: list, mean: float) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"pipeline: ad\nseed: {seed}\nbenchmark: {{name: mvtec}}\n"
                                     f"network: {{name: fcdd_cnn224}}\ntrainer: {{name: fcdd}}\n"
                                     f"ad: {{seeds: {len(seeds)}}}\n")
    (run / "run.json").write_text(json.dumps({"status": "complete", "seed": seed}))
    (run / "metrics.json").write_text(json.dumps({"auroc_mean": mean, "protocol": "one_vs_rest", "seeds": seeds}))
    (run / "metrics.csv").write_text(f"class,auroc_mean,auroc_std,n_seeds,aurocs\nbottle,{mean},0.0,{len(seeds)},\n"
                                     f"mean,{mean},0.0,{len(seeds)},\n")
    return run


def test_ad_runs_next_to_test_runs_are_read(tmp_path, capsys):
    make_run(tmp_path, "ood", 0, {"msp": (0.9, 0.8, 0.8)})
    _ad_run(tmp_path, "ad0", 0, [0, 1], 0.90)
    _ad_run(tmp_path, "ad2", 2, [2, 3], 0.80)
    table = build_leaderboard(tmp_path)
    assert capsys.readouterr().err == ""
    assert "AD_AUROC" in table.columns and len(table) == 2
    ad = table[table.Postprocessor == "ad:one_vs_rest"].iloc[0]
    assert ad["AD_AUROC"] == "85.00 ± 5.00" and ad["Seeds"] == 4 and ad["Training"] == "fcdd"
    assert table[table.Postprocessor == "msp"].iloc[0]["AD_AUROC"] == ""
    only_ood = tmp_path / "only"
    make_run(only_ood, "ood", 0, {"msp": (0.9, 0.8, 0.8)})
    assert "AD_AUROC" not in build_leaderboard(only_ood).columns  # test-run tables keep their columns
