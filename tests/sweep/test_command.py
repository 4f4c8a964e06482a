"""``openood-ext sweep``: grid parsing, one run directory per point, the leaderboard over them, bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import MAIN_CONFIG, cli

from openood_ext.cli import main
from openood_ext.errors import ConfigError
from openood_ext.sweep.command import parse_grid, point_name, split_list


def test_value_lists_split_at_top_level_commas_only():
    assert split_list("[0, 1,2]", "seed=[0,1,2]") == ["0", "1", "2"]
    assert split_list("[[msp,knn], {name: knn, k: 5}, 'a,b']", "t") == ["[msp,knn]", "{name: knn, k: 5}", "'a,b'"]
    axes, fixed = parse_grid(["seed=[0,1]", "postprocessors=[[msp,ebo]]", "trainer.epochs=3"])
    assert axes == [("seed", ["0", "1"]), ("postprocessors", ["[msp,ebo]"])] and fixed == ["trainer.epochs=3"]
    assert point_name("exp", [("trainer.lr", "0.1"), ("network", "a/b c")]) == "exp__trainer.lr-0.1__network-a-b-c"


@pytest.mark.parametrize(("token", "message"), [
    ("seed=[]", r"sweep: 'seed=\[\]': empty value list"),
    ("seed=[ ]", r"empty value list"),
    ("seed=[0,,1]", r"empty element"),
    ("seed=[[0,1]", r"unbalanced"),
    ("seed=[0,1", r"sweep: 'seed=\[0,1': unbalanced brackets"),  # was "no axis to sweep"
    ("seed=0,1]", r"sweep: 'seed=0,1\]': unbalanced brackets"),
    ("seed=[0,1]]", r"unbalanced"),
])
def test_bad_value_lists_are_one_line_and_create_nothing(tmp_path, monkeypatch, capsys, token, message):
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "--config", str(MAIN_CONFIG), token, "--jobs", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("openood-ext: error:")
    with pytest.raises(ConfigError, match=message):
        main(["sweep", "--config", str(MAIN_CONFIG), token, "--debug"])
    assert list(tmp_path.iterdir()) == []


def test_a_bad_point_or_backend_is_caught_before_any_job(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "--config", str(MAIN_CONFIG), "seed=[0,1]", "batch_size=[8,abc]"]) == 2
    assert "batch_size" in capsys.readouterr().err
    assert main(["sweep", "--config", str(MAIN_CONFIG), "seed=[0,1]", "--backend", "slurm"]) == 2
    assert "sweep.backend: expected one of local, submitit, ray" in capsys.readouterr().err
    assert main(["sweep", "--config", str(MAIN_CONFIG), "postprocessors=[msp,ebo]", "--jobs", "2"]) == 2
    assert "would each train the missing checkpoint" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def random_digits_checkpoint(tmp_path_factory):
    """An untrained digits_cnn checkpoint: the sweep's plumbing, not the metrics, is under test."""
    import torch

    from openood_ext.networks import NETWORKS
    from openood_ext.networks.checkpoint import save_checkpoint
    spec = {"name": "digits_cnn", "num_classes": 6, "in_channels": 1, "width": 32}
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "digits_random.pt"
    save_checkpoint(path, NETWORKS.build(spec), spec)
    return path


def test_sweep_runs_each_point_in_its_own_directory_and_the_leaderboard_collects_them(tmp_path, random_digits_checkpoint):
    proc = cli("sweep", "--config", str(MAIN_CONFIG), "seed=[0,1]", "postprocessors=[[msp,ebo]]",
               f"network.checkpoint={random_digits_checkpoint}", "cache_dir=null", "--jobs", "2",
               cwd=tmp_path, module="openood_ext.cli")
    assert proc.returncode == 0, proc.stderr[-2000:]
    sweep_dir = tmp_path / "results" / "sweep_test_ood"
    names = [f"digits_digits_cnn_test_ood_s{s}__seed-{s}__postprocessors-msp-ebo" for s in (0, 1)]
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    assert [r["name"] for r in summary["runs"]] == names and {r["status"] for r in summary["runs"]} == {"complete"}
    assert summary["axes"] == {"seed": ["0", "1"], "postprocessors": ["[msp,ebo]"]}
    for seed, name in enumerate(names):
        record = json.loads((sweep_dir / name / "run.json").read_text())
        assert record["status"] == "complete" and record["seed"] == seed
        assert set(pd.read_csv(sweep_dir / name / "metrics.csv").postprocessor) == {"msp", "ebo"}
        assert (sweep_dir / f"{name}.out").is_file()
    assert all(name in proc.stdout for name in names) and "openood-ext leaderboard" in proc.stderr
    out = tmp_path / "lb.csv"
    assert main(["leaderboard", str(sweep_dir), "-o", str(out)]) == 0
    board = pd.read_csv(out)
    assert sorted(board.Postprocessor) == ["ebo", "msp"] and (board.Seeds == 2).all()  # the seeds, averaged
