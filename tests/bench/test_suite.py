"""The forward / imglist / knn / zoo-scaling bench commands on tiny sizes: their figures are consistent and their helpers exact."""

from __future__ import annotations

import pytest

from openood_ext.bench.zoo_scaling import growth_exponent, markdown_table
from openood_ext.utils.timing import alternate


def test_alternate_runs_abba_after_one_warm_up_each():
    calls = []
    a, b = alternate(lambda: calls.append("a") or 1.0, lambda: calls.append("b") or 2.0, rounds=4)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"] and a == [1.0] * 4 and b == [2.0] * 4


def test_growth_exponent_recovers_a_power_law():
    sizes = [1000, 5000, 10000, 50000]
    assert growth_exponent(sizes, [3e-6 * n ** 1.5 for n in sizes]) == pytest.approx(1.5)
    assert growth_exponent(sizes, [0.2] * 4) == pytest.approx(0.0, abs=1e-9)
    assert growth_exponent([1000, 2000], [1.0, 2.0]) is None  # nothing >= 5000 to fit


def test_zoo_scaling_runs_the_feature_space_zoo():
    from openood_ext.bench.zoo_scaling import bench_zoo_scaling
    r = bench_zoo_scaling(sizes=(200, 400), dim=16, classes=3, test=50, only=["msp", "knn", "mds"], repeats=1)
    assert [row["postprocessor"] for row in r["rows"]] == ["knn", "mds", "msp"]
    assert all(not row["error"] and set(row["seconds"]) == {200, 400} for row in r["rows"])
    table = markdown_table(r)
    assert table.count("\n") == 4 and "| knn |" in table


def test_zoo_scaling_skips_plugins_and_tolerates_duck_typed_ones():
    """A duck-typed plugin (no needs_network / uses_taps attributes) registered by anyone must not break
    the method list; only the toolkit's own feature-space methods are timed."""
    from openood_ext.bench.zoo_scaling import zoo_methods
    from openood_ext.postprocessors import POSTPROCESSORS

    @POSTPROCESSORS.register("test_bench_duck", force=True)
    class Duck:
        def fit(self, train_outputs):
            return self

        def score(self, outputs):
            return outputs.logits.max(dim=1).values.numpy()

    names = zoo_methods()
    assert "test_bench_duck" not in names and {"msp", "knn"} <= set(names) and "odin" not in names


def test_knn_bench_compares_equal_searches():
    pytest.importorskip("faiss")
    from openood_ext.bench.knn import bench_knn
    r = bench_knn(bank=2000, dim=32, queries=200, k=5, rounds=2)
    assert r["max_abs_distance_difference"] < 1e-4 and r["auto_picks"] == "faiss"
    assert r["faster"] in ("faiss", "torch") and r["auto_picks_faster"] == (r["faster"] == "faiss")
    assert (r["ratio_torch_over_faiss"] > 1) == (r["faster"] == "faiss")  # the ratio and the verdict agree


def test_forward_and_imglist_benches_on_digits():
    from openood_ext.bench.forward import bench_forward
    from openood_ext.bench.imglist import bench_imglist
    r = bench_imglist("digits", "id_test", images=64, batch_size=32, rounds=2)
    assert r["images"] == 64 and r["ratio_ours_over_plain"] > 0 and len(r["ours_runs"]) == 2
    f = bench_forward("digits", "id_test", images=64, network="digits_cnn", width=8, batch_size=32, rounds=2,
                      device="cpu")
    assert f["images"] == 64 and f["ratio_ours_over_plain"] > 0 and len(f["plain_runs"]) == 2
