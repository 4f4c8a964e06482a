"""The full-spectrum setting (``Evaluator.eval_ood(fsood=True)``): covariate-shifted ID sets join the ID side
of every OOD metric and of ACC, as OpenOOD v1.5 computes them; absent ones are skipped and listed; the
standard setting is unchanged by a benchmark's csid sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from openood_ext.datasets import Benchmark
from openood_ext.errors import ConfigError
from openood_ext.pipelines.run_identity import NOT_IDENTITY, run_identity

from conftest import write_class_set

PRE = {"image_size": 28, "resize": 28, "channels": 1, "mean": [0.5], "std": [0.5], "train_augment": []}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsood")
    write_class_set(root, "band", (("train", 4), ("val", 2), ("test", 4), ("shifted", 3), ("far", 3)),
                    np.random.default_rng(0))
    return root


def bench(root, csid=True):
    return Benchmark(num_classes=3, id={"train": "train.txt", "val": "val.txt", "test": "test.txt"},
                     ood={"far": {"junk": "far.txt"}}, imglist_dir=str(root / "lists"), data_root=str(root),
                     preprocessor=PRE, csid={"shifted": "shifted.txt", "gone": "test_absent.txt"} if csid else None)


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 3))


def evaluate(root, fsood, csid=True):
    from openood_ext import Evaluator
    ev = Evaluator(net(), benchmark=bench(root, csid), postprocessors=["msp"], device="cpu", verbose=False)
    return ev, ev.eval_ood(fsood=fsood)


def test_fsood_auroc_and_acc_are_over_id_test_plus_csid(toy):
    ev, df = evaluate(toy, fsood=True)
    s = ev.scores["msp"]
    id_conf = np.concatenate([s["id_test"], s["shifted"]])
    labels = np.r_[np.ones(len(id_conf)), np.zeros(len(s["junk"]))]
    expected = roc_auc_score(labels, np.concatenate([id_conf, s["junk"]]))
    assert df.loc[("msp", "junk"), "AUROC"] == pytest.approx(100 * expected)
    scored = ev._scored["msp"]
    preds = np.concatenate([scored["id_test"]["preds"], scored["shifted"]["preds"]])
    truth = np.concatenate([scored["id_test"]["labels"], scored["shifted"]["labels"]])
    assert df.loc[("msp", "junk"), "ACC"] == pytest.approx(100 * (preds == truth).mean())
    summary = ev._summary["postprocessors"]["msp"]
    assert summary["fsood"] and summary["csid_sets"] == ["shifted"]
    assert summary["id_test_accuracy"] == pytest.approx(
        (scored["id_test"]["preds"] == scored["id_test"]["labels"]).mean())


def test_absent_csid_sets_are_skipped_and_listed(toy):
    ev, _ = evaluate(toy, fsood=True)
    skipped = ev._summary["skipped_sets"]
    assert skipped["gone"]["group"] == "csid" and "not found" in skipped["gone"]["reason"]
    assert "gone" not in ev.scores["msp"]
    assert ev._summary["fsood"] == {"csid_sets": ["shifted"]}


def test_without_fsood_the_numbers_are_unchanged_and_csid_is_not_read(toy):
    ev, with_csid = evaluate(toy, fsood=False)
    _, plain = evaluate(toy, fsood=False, csid=False)
    assert set(ev.scores["msp"]) == {"id_test", "junk"}
    assert "gone" not in ev._summary["skipped_sets"]
    np.testing.assert_array_equal(with_csid.to_numpy(), plain.to_numpy())


def test_fsood_needs_csid_sets(toy):
    with pytest.raises(ConfigError, match="no covariate-shifted ID sets"):
        evaluate(toy, fsood=True, csid=False)


def test_the_fsood_run_key_is_a_typed_identity_key():
    from openood_ext.config import RUN_KEYS, RunSettings
    assert "fsood" in RUN_KEYS and RunSettings.__annotations__["fsood"] in (bool, "bool")
    assert "fsood" not in NOT_IDENTITY
    base = {"pipeline": "test_ood", "benchmark": {"name": "cifar10"}}
    with_csid = {"pipeline": "test_ood", "benchmark": {"name": "cifar10", "csid": {"cifar10c": "test_cifar10c.txt"}}}
    assert run_identity(base) == run_identity(with_csid)  # csid lists are not read without fsood
    assert run_identity({**with_csid, "fsood": True}) != run_identity(with_csid)


@pytest.mark.parametrize("name, lists", [("cifar10", ["test_cifar10c.txt"]), ("cifar100", ["test_cifar100c.txt"]),
                                         ("imagenet200", ["test_imagenet200_v2.txt", "test_imagenet200_c.txt",
                                                          "test_imagenet200_r.txt"]),
                                         ("imagenet", ["test_imagenet_v2.txt", "test_imagenet_c.txt",
                                                       "test_imagenet_r.txt"])])
def test_openood_benchmarks_define_their_csid_sets(tmp_path, name, lists):
    from openood_ext.datasets.cli import load_benchmark
    b = load_benchmark(name, tmp_path)
    csid = b.splits(("csid",))
    assert [s.imglist.name for s in csid] == lists
    assert all(b.missing_reason(s) for s in csid)  # absent here: skipped, never downloaded


def test_the_command_line_computes_fsood_as_the_evaluator_does(toy, tmp_path):
    """``fsood: true`` in a test_ood run: the same concatenated ID side, read back from the run's files."""
    import json

    from omegaconf import OmegaConf

    from openood_ext.runner import run_config
    spec = {"name": "imglist", "num_classes": 3, "data_root": str(toy), "imglist_dir": str(toy / "lists"),
            "preprocessor": PRE, "id": {"train": "train.txt", "val": "val.txt", "test": "test.txt"},
            "ood": {"far": {"junk": "far.txt"}}, "csid": {"shifted": "shifted.txt", "gone": "test_absent.txt"}}
    cfg = OmegaConf.create({
        "pipeline": "test_ood", "experiment": "fsood_cli", "seed": 0, "device": "cpu", "num_workers": 0,
        "output_dir": str(tmp_path / "results"), "cache_dir": None, "batch_size": 64, "fsood": True,
        "train_if_missing": True, "benchmark": spec, "evaluator": "ood", "postprocessors": ["msp"],
        "network": {"name": "digits_cnn", "num_classes": 3, "in_channels": 1, "width": 8,
                    "checkpoint": str(tmp_path / "net.pt")},
        "trainer": {"name": "base", "epochs": 1, "batch_size": 8, "optimizer": {"name": "sgd", "lr": 0.05},
                    "scheduler": {"name": "constant"}}})
    run_dir = Path(run_config(cfg)["run_dir"])
    scores = np.load(run_dir / "scores" / "msp.npz")
    id_conf = np.concatenate([scores["id_test__conf"], scores["shifted__conf"]])
    junk = scores["junk__conf"]
    expected = roc_auc_score(np.r_[np.ones(len(id_conf)), np.zeros(len(junk))], np.concatenate([id_conf, junk]))
    text = json.dumps(json.loads((run_dir / "metrics.json").read_text()))
    assert '"fsood": true' in text and '"shifted"' in text and "gone" not in scores
    rows = [line.split(",") for line in (run_dir / "metrics.csv").read_text().splitlines()]
    header = rows[0]
    auroc = [r for r in rows[1:] if dict(zip(header, r)).get("dataset") == "junk"
             and dict(zip(header, r)).get("metric") == "auroc"]
    assert auroc and float(dict(zip(header, auroc[0]))["value"]) == pytest.approx(expected)
