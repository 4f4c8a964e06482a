"""The Evaluator: the command line's numbers for the same checkpoint and benchmark, its table and files,
and the one-line errors for an unprepared benchmark or a network of another class count."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from openood_ext.errors import ConfigError, DataError
from openood_ext.networks import NETWORKS
from openood_ext.networks.checkpoint import load_checkpoint

RUN = "results/digits_digits_cnn_test_ood_s0"
MAIN_JOB_POSTPROCESSORS = ["msp", "ebo", {"name": "knn", "k": 10}, {"name": "hsc", "center": "fit"}]


@pytest.fixture(scope="module")
def evaluated(digits_run, digits_checkpoint, tmp_path_factory):
    from openood_ext import Evaluator
    work, _ = digits_run
    net = NETWORKS.build({"name": "digits_cnn"})
    load_checkpoint(digits_checkpoint, net)
    ev = Evaluator(net, benchmark="digits", postprocessors=MAIN_JOB_POSTPROCESSORS, data_root=work / "data",
                   device="cpu", verbose=False)
    df = ev.eval_ood()
    out = ev.save(tmp_path_factory.mktemp("evaluator") / "run")
    return work, ev, df, out


def test_metrics_equal_the_command_line_for_the_same_checkpoint(evaluated):
    work, ev, _, out = evaluated
    cli = pd.read_csv(work / RUN / "metrics.csv")
    mine = pd.read_csv(out / "metrics.csv")
    assert list(mine.columns) == list(cli.columns)
    pd.testing.assert_frame_equal(mine, cli)  # exact: same passes, same scheduler, same evaluator
    for label in ("msp", "ebo", "knn", "hsc"):
        with np.load(work / RUN / "scores" / f"{label}.npz") as theirs, np.load(out / "scores" / f"{label}.npz") as ours:
            assert sorted(theirs.files) == sorted(ours.files)
            for key in theirs.files:
                np.testing.assert_array_equal(ours[key], theirs[key])
        np.testing.assert_array_equal(ev.scores[label]["id_test"], np.load(out / "scores" / f"{label}.npz")["id_test__conf"])


def test_the_table_has_openood_columns_and_rows(evaluated):
    _, ev, df, _ = evaluated
    assert list(df.columns) == ["FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT", "ACC", "partial"]
    assert df.index.names == ["postprocessor", "dataset"]
    assert list(df.loc["msp"].index) == ["digits6to9", "nearood", "textures", "photos", "farood"]
    assert list(df.index.get_level_values(0).unique()) == ["msp", "ebo", "knn", "hsc"]
    summary = json.loads((evaluated[3] / "metrics.json").read_text())
    far = summary["postprocessors"]["knn"]["groups"]["far"]["auroc"]
    assert df.loc[("knn", "farood"), "AUROC"] == pytest.approx(100 * far)
    assert ((df.ACC > 0) & (df.ACC <= 100)).all()
    assert set(ev.scores["ebo"]) == {"id_test", "digits6to9", "textures", "photos"}


def test_save_writes_the_files_of_a_command_line_run(evaluated):
    out = evaluated[3]
    for name in ("metrics.csv", "metrics.json", "report.html", "run.json", "scores/msp.npz"):
        assert (out / name).is_file(), name


def test_a_benchmark_that_is_not_prepared_is_one_line_with_the_prepare_command(tmp_path):
    from openood_ext import Evaluator
    net = NETWORKS.build({"name": "digits_cnn", "num_classes": 10})
    with pytest.raises(DataError) as err:
        Evaluator(net, benchmark="cifar10", data_root=tmp_path / "empty", device="cpu")
    assert "openood-ext data prepare cifar10" in str(err.value) and "\n" not in str(err.value)


def test_logits_of_another_class_count_are_one_line(digits_run):
    from openood_ext import Evaluator
    work, _ = digits_run
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    ev = Evaluator(net, benchmark="digits", postprocessors=["msp"], data_root=work / "data", device="cpu", verbose=False)
    with pytest.raises(ConfigError) as err:
        ev.eval_ood()
    assert "4 logits but benchmark digits has 6 classes" in str(err.value) and "\n" not in str(err.value)


def test_a_plain_module_with_methods_that_need_the_classifier_and_the_layers(digits_run):
    """A user's own class (no return_feature, no get_fc_layer): ViM's weights, ReAct's bias, Gram's taps,
    ODIN's input gradients, a dict preprocessing override, and nothing written to disk."""
    from openood_ext import Evaluator
    work, _ = digits_run

    class Mine(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, padding=1)
            self.relu = nn.ReLU()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(8, 6)

        def forward(self, x):
            return self.head(self.pool(self.relu(self.conv(x))).flatten(1))

    torch.manual_seed(0)
    before = set(work.rglob("*"))
    ev = Evaluator(Mine(), benchmark="digits", postprocessors=["vim", "react", "gram", "odin"],
                   data_root=work / "data", preprocess={"image_size": 8}, device="cpu", verbose=False)
    df = ev.eval_ood()
    assert set(df.index.get_level_values(0)) == {"vim", "react", "gram", "odin"}
    assert np.isfinite(df[["AUROC", "FPR@95"]].to_numpy()).all()
    assert set(work.rglob("*")) == before


def test_a_typo_in_a_postprocessor_fails_before_any_pass(digits_run):
    from openood_ext import Evaluator
    from openood_ext.errors import RegistryError
    with pytest.raises(RegistryError, match="knn"):
        Evaluator(nn.Linear(2, 2), benchmark="digits", postprocessors=["knnn"], data_root=digits_run[0] / "data")


def test_the_output_cache_is_keyed_by_the_weights(digits_run, tmp_path):
    from openood_ext import Evaluator
    work, _ = digits_run
    net = NETWORKS.build({"name": "digits_cnn"})
    kw = dict(benchmark="digits", postprocessors=["msp"], data_root=work / "data", device="cpu", verbose=False,
              cache_dir=tmp_path / "cache")
    first = Evaluator(net, **kw)
    first.eval_ood()
    again = Evaluator(net, **kw)
    again.eval_ood()
    assert again.source.cache.hits == first.source.forward_passes > 0 and again.source.forward_passes == 0
    with torch.no_grad():
        net.fc.bias += 1.0
    changed = Evaluator(net, **kw)
    changed.eval_ood()
    assert changed.source.cache.hits == 0 and changed.source.forward_passes > 0
