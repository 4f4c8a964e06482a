"""Duck-typed plugins, a leaderboard that never mixes hyperparameters, a registry that knows no part."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import MAIN_CONFIG, REPO
from openood_ext import cli as cli_module
from openood_ext.errors import RegistryError
from openood_ext.leaderboard import build_leaderboard, main as leaderboard_main
from openood_ext.postprocessors import POSTPROCESSORS


@POSTPROCESSORS.register("test_duck_maxlogit", force=True)
class DuckMaxLogit:
    """Max logit, written against the documented contract only: fit and score, no base class."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale
        self.fitted = False

    def fit(self, train_outputs):
        self.fitted = True

    def score(self, outputs):
        assert self.fitted
        return self.scale * outputs.logits.max(dim=1).values.double().numpy()


@POSTPROCESSORS.register("test_no_score", force=True)
class NoScore:
    """Has fit but no score."""

    def fit(self, train_outputs):
        pass


def test_duck_typed_postprocessor_runs_in_the_pipeline(digits_run, digits_checkpoint, tmp_path, monkeypatch, capsys):
    work, _ = digits_run
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENOOD_EXT_DATA", str(work / "data"))
    code = cli_module.main(["run", "--config", str(MAIN_CONFIG), f"network.checkpoint={digits_checkpoint}",
                            "cache_dir=null", "postprocessors=[{name: test_duck_maxlogit, scale: 2.0}]"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "results/digits_digits_cnn_test_ood_s0/metrics.json").read_text())
    entry = summary["postprocessors"]["test_duck_maxlogit"]
    assert entry["hyperparameters"] == {"scale": 2.0, "fitted": True}
    assert entry["groups"]["near"]["auroc"] > 0.8


def test_class_without_score_is_rejected_when_built(capsys):
    with pytest.raises(RegistryError, match=r"'test_no_score' .* lacks score\(\)"):
        POSTPROCESSORS.build("test_no_score")
    assert cli_module.main(["run", "--config", str(MAIN_CONFIG), "postprocessors=[test_no_score]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lacks score()" in err[0]


def make_run(root, name, seed, k, near, lr=0.1):
    """A complete knn run as test_ood writes it (config, run.json, metrics.csv/json, report.html)."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        f"benchmark: {{name: digits}}\nnetwork: {{name: digits_cnn, checkpoint: ck_s{seed}.pt}}\n"
        f"trainer: {{name: base, lr: {lr}}}\nseed: {seed}\nexperiment: knn_k{k}_s{seed}\n"
        f"postprocessors: [{{name: knn, k: {k}}}]\n")
    (run / "run.json").write_text(json.dumps({"status": "complete", "seed": seed, "checkpoint_meta": {"epochs": 30}}))
    rows = [("knn", "id_test", "id", "accuracy", 0.99, False), ("knn", "nearood", "near", "auroc", near, False),
            ("knn", "farood", "far", "auroc", near, False)]
    pd.DataFrame(rows, columns=["postprocessor", "dataset", "group", "metric", "value", "partial"]).to_csv(
        run / "metrics.csv", index=False)
    (run / "metrics.json").write_text(json.dumps({"postprocessors": {"knn": {"hyperparameters": {"k": k}}}}))
    (run / "report.html").write_text("<html></html>")
    return run


def test_leaderboard_never_averages_different_hyperparameters(tmp_path, capsys):
    results = tmp_path / "results"
    for k, near in ((2, 0.90), (10, 0.98), (100000, 0.20)):
        for seed in (0, 1):
            make_run(results, f"knn_k{k}_s{seed}", seed, k, near + seed / 100)
    make_run(results, "knn_k10_lr_s0", 0, 10, 0.5, lr=0.01)  # same k, another learning rate
    table = build_leaderboard(results)
    assert len(table) == 4
    by_label = table.set_index("Hyperparameters")
    # the learning rate is named only where it tells rows apart
    assert set(by_label.index) == {"k=2", "k=10, trainer.lr=0.1", "k=10, trainer.lr=0.01", "k=100000"}
    row = by_label.loc["k=10, trainer.lr=0.1"]
    assert row["Seeds"] == 2 and row["Near-OOD_AUROC"] == "98.50 ± 0.50"
    assert row["Runs"].split("; ") == [str(results / "knn_k10_s0"), str(results / "knn_k10_s1")]
    assert by_label.loc["k=10, trainer.lr=0.01", "Seeds"] == 1
    assert by_label.loc["k=100000", "Near-OOD_AUROC"] == "20.50 ± 0.50"
    out = tmp_path / "lb.md"
    assert leaderboard_main([str(results), "-o", str(out)]) == 0
    assert "[results/knn_k2_s0](results/knn_k2_s0/report.html)" in out.read_text()
    assert leaderboard_main([str(results), "-o", str(tmp_path / "lb.csv")]) == 0
    runs = pd.read_csv(tmp_path / "lb.csv").set_index("Hyperparameters").loc["k=2", "Runs"]
    assert runs == "results/knn_k2_s0; results/knn_k2_s1"
    capsys.readouterr()


def test_registry_module_imports_no_part():
    code = ("import sys, openood_ext.registry; "
            "print(sorted(m for m in sys.modules if m.startswith('openood_ext.') and m != 'openood_ext.registry'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "pipelines" not in out and "postprocessors" not in out and "torch" not in out


def test_schema_keeps_integers_integers():
    from openood_ext.errors import ConfigError
    with pytest.raises(ConfigError, match="expected int >= 1, got 0"):
        POSTPROCESSORS.check({"name": "knn", "k": 0})
    for bad in (2.5, True, "3", None):
        with pytest.raises(ConfigError, match="'k': expected int"):
            POSTPROCESSORS.check({"name": "knn", "k": bad})
    assert POSTPROCESSORS.build({"name": "ebo", "temperature": 2}).temperature == 2  # an int is a fine float
    assert np.isclose(POSTPROCESSORS.build({"name": "react", "percentile": 95}).percentile, 95)


def test_from_folder_takes_several_ood_folders_as_readme_shows(tmp_path, monkeypatch, capsys):
    from PIL import Image
    rng = np.random.default_rng(0)
    for folder, n in (("my_images/a", 12), ("my_images/b", 12), ("junk", 4), ("other", 4)):
        (tmp_path / folder).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / folder / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    assert cli_module.main(["data", "from-folder", "my_images/", "--name", "mydata", "--ood", "junk/", "other/"]) == 0
    out = capsys.readouterr().out
    assert "junk" in out and "other" in out


def test_knn_k_above_the_training_set_is_clamped_and_recorded(caplog):
    import torch
    from openood_ext.features import NetOutputs
    train = NetOutputs(torch.zeros(10, 3), torch.randn(10, 4))
    pp = POSTPROCESSORS.build({"name": "knn", "k": 1000})
    with caplog.at_level("WARNING", logger="openood_ext"):
        pp.fit(train)
    assert pp.hyperparameters()["k"] == 10 and pp.hyperparameters()["k_requested"] == 1000
    assert pp.score(NetOutputs(torch.zeros(5, 3), torch.randn(5, 4))).shape == (5,)
