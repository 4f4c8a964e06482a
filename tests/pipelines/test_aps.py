"""Automatic parameter search picks the known best; the feature cache spares forward passes and heals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import MAIN_CONFIG, cli
from openood_ext.errors import ConfigError
from openood_ext.features import FeatureCache, NetOutputs, extract_outputs
from openood_ext.pipelines import aps
from openood_ext.postprocessors import POSTPROCESSORS, Postprocessor


@POSTPROCESSORS.register("test_signed_feature", force=True)
class SignedFeature(Postprocessor):
    """Test: conf = w * features[:, 0]."""

    def __init__(self, w: float = 1.0):
        self.w = w

    def score(self, outputs):
        return (self.w * outputs.features[:, 0].double()).numpy()


def test_grid_combinations_in_order():
    assert aps.grid_combinations({"a": [1, 2], "b": ["x", "y"]}) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
    with pytest.raises(ConfigError, match="aps_grid.a"):
        aps.grid_combinations({"a": []})


def test_search_picks_the_known_best():
    rng = np.random.default_rng(0)
    id_val = NetOutputs(torch.zeros(200, 2), torch.tensor(rng.normal(2, 1, (200, 1)), dtype=torch.float32))
    ood_val = NetOutputs(torch.zeros(100, 2), torch.tensor(rng.normal(0, 1, (100, 1)), dtype=torch.float32))

    def fit_and_score(pp):
        return pp.score(id_val), pp.score(ood_val)

    result = aps.search({"name": "test_signed_feature"}, {"w": [-1.0, 0.0, 0.5, 2.0]}, fit_and_score)
    assert result["chosen"] == {"w": 0.5}  # first of the tied best (any positive w ranks identically)
    aurocs = {t["params"]["w"]: t["auroc"] for t in result["trials"]}
    assert aurocs[0.0] == pytest.approx(0.5) and aurocs[-1.0] == pytest.approx(1 - aurocs[2.0])
    assert aurocs[0.5] == aurocs[2.0] > 0.9


def test_search_without_grid_is_a_clear_error():
    with pytest.raises(ConfigError, match="no aps_grid"):
        aps.search({"name": "test_signed_feature"}, None, lambda pp: (None, None))


def test_aps_in_pipeline_records_choice(digits_checkpoint, tmp_path):
    proc = cli("--config", str(MAIN_CONFIG), f"network.checkpoint={digits_checkpoint}",
               "postprocessors=[{name: knn, APS: true, aps_grid: {k: [1, 5, 300]}}]", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "results/digits_digits_cnn_test_ood_s0/metrics.json").read_text())
    search = summary["postprocessors"]["knn"]["aps"]
    assert [t["params"]["k"] for t in search["trials"]] == [1, 5, 300]
    best = max(search["trials"], key=lambda t: t["auroc"])
    assert search["chosen"] == best["params"]
    assert summary["postprocessors"]["knn"]["hyperparameters"]["k"] == best["params"]["k"]


class CountingNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.calls = 0

    def forward(self, x, return_feature=False):
        self.calls += 1
        feat = x.flatten(1)
        return (self.fc(feat), feat) if return_feature else self.fc(feat)

    def get_fc_layer(self):
        return self.fc


def loader():
    x = torch.randn(10, 4)
    return [(x[:6], torch.zeros(6, dtype=torch.long)), (x[6:], torch.ones(4, dtype=torch.long))]


def test_cache_hit_does_no_forward_pass_and_truncation_is_healed(tmp_path):
    net, batches = CountingNet(), loader()
    cache = FeatureCache(tmp_path)
    compute = lambda: extract_outputs(net, batches)  # noqa: E731
    first = cache.get_or_compute("k1", compute, expected_samples=10)
    assert net.calls == 2 and cache.misses == 1
    second = cache.get_or_compute("k1", compute, expected_samples=10)
    assert net.calls == 2 and cache.hits == 1
    torch.testing.assert_close(first.features, second.features)
    assert "fc_weight" in second.extras

    path = cache.path("k1")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated by a crash
    third = cache.get_or_compute("k1", compute, expected_samples=10)
    assert net.calls == 4 and len(third) == 10
    assert cache.load("k1", expected_samples=10) is not None  # rewritten whole

    assert cache.load("k1", expected_samples=11) is None  # stale: image list changed size
    path.rename(cache.path("k2"))
    assert cache.load("k2") is None  # an entry written under another key is not trusted


def test_a_one_point_grid_is_not_searched_and_rides_the_shared_passes(digits_checkpoint, tmp_path, monkeypatch):
    """Gram's grid has one point: under APS it must neither search nor run passes of its own."""
    from openood_ext.cli import main as cli_main
    from openood_ext.postprocessors.gram import GramPostprocessor

    def no_own_pass(*_a, **_k):
        raise AssertionError("gram ran its own pass over a loader")

    monkeypatch.setattr(GramPostprocessor, "score_loader", no_own_pass)
    monkeypatch.setattr(aps, "search", lambda *a, **k: (_ for _ in ()).throw(AssertionError("searched")))
    monkeypatch.chdir(tmp_path)
    assert cli_main(["run", "--config", str(MAIN_CONFIG), f"network.checkpoint={digits_checkpoint}",
                     "postprocessors=[{name: gram, APS: true}]", "experiment=one_point"]) == 0
    run = tmp_path / "results/one_point"
    entry = json.loads((run / "metrics.json").read_text())["postprocessors"]["gram"]
    assert entry["aps"] == {"chosen": {"powers": [1, 2, 3, 4, 5]}, "auroc": None, "trials": []}
    assert entry["hyperparameters"]["powers"] == [1, 2, 3, 4, 5]  # list-valued settings are recorded too
    assert json.loads((run / "run.json").read_text())["forward_passes"] == 6
    assert "the grid&#x27;s only point" in (run / "report.html").read_text() or \
        "the grid's only point" in (run / "report.html").read_text()


@pytest.mark.parametrize("specs, match", [
    ([{"name": "vra", "percentile_low": 95}], "percentile_low \\(95\\) must be below"),
    ([{"name": "gmm", "alpha": [1]}], "lists of one length"),
    ([{"name": "scale", "APS": True, "aps_grid": {"percentile": [85, 100]}}], "percentile must be in \\[0, 100\\)"),
    ([{"name": "cfood", "k": 0}], "'k': expected float > 0")])
def test_check_specs_runs_the_constructors_rules_too(specs, match):
    """Rules that relate arguments to each other live in the constructors: the run's check (before anything is
    written) builds every entry and grid point, so they fail there as a ConfigError."""
    with pytest.raises(ConfigError, match=match):
        aps.check_specs(specs)
    aps.check_specs([{"name": "vra", "percentile_low": 5}, {"name": "scale", "APS": True}])  # valid ones pass
