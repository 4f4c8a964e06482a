"""ad_ovr, osr and pixel evaluators against scikit-learn, with their edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from openood_ext.errors import DataError
from openood_ext.evaluators import EVALUATORS
from openood_ext.evaluators.ad_ovr import ADRecord
from openood_ext.evaluators.metrics import auroc


def test_auroc_matches_sklearn_with_ties_and_refuses_one_class():
    rng = np.random.default_rng(0)
    for _ in range(30):
        scores = rng.integers(0, 4, 50).astype(float)  # heavy ties
        labels = rng.integers(0, 2, 50)
        if labels.min() == labels.max():
            continue
        assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert auroc(np.ones(10), np.r_[np.ones(5), np.zeros(5)]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="only one is present"):
        auroc(np.arange(4.0), np.ones(4))


# ---------------------------------------------------------------- ad_ovr
def _ad_records(n_classes=3, seeds=(0, 1), seed=1):
    rng = np.random.default_rng(seed)
    records, expected = [], {}
    for cls in range(n_classes):
        for s in seeds:
            labels = np.r_[np.zeros(40), np.ones(60)]
            scores = np.round(rng.normal(labels * (cls + 0.5), 1.0), 1)  # rounded: ties
            records.append(ADRecord(cls, s, scores, labels))
            expected[(cls, s)] = roc_auc_score(labels, scores)
    return records, expected


def test_ad_ovr_aggregates_over_seeds_and_classes_like_sklearn():
    records, expected = _ad_records()
    out = EVALUATORS.build("ad_ovr").evaluate(records, method="hsc", dataset="mnist")
    by_class = {c: [expected[(c, s)] for s in (0, 1)] for c in range(3)}
    for cls, values in by_class.items():
        assert out["per_class"][cls]["aurocs"] == pytest.approx(values)
        assert out["per_class"][cls]["auroc_mean"] == pytest.approx(np.mean(values))
        assert out["per_class"][cls]["auroc_std"] == pytest.approx(np.std(values))
    class_means = [np.mean(v) for v in by_class.values()]
    assert out["auroc_mean"] == pytest.approx(np.mean(class_means))
    assert out["auroc_std_over_classes"] == pytest.approx(np.std(class_means))
    assert out["auroc_std_over_seeds"] == pytest.approx(np.mean([np.std(v) for v in by_class.values()]))
    seed_means = [np.mean([expected[(c, s)] for c in range(3)]) for s in (0, 1)]
    assert [out["per_seed"][s] for s in (0, 1)] == pytest.approx(seed_means)
    assert out["auroc_std_of_seed_means"] == pytest.approx(np.std(seed_means))
    assert out["mode"] == "one_vs_rest" and out["n_classes"] == 3
    # the same results given as {(class, seed): (scores, labels)}
    as_dict = {(r.cls, r.seed): (r.scores, r.is_anomaly) for r in records}
    loo = EVALUATORS.build({"name": "ad_ovr", "mode": "leave_one_out"}).evaluate(as_dict)
    assert loo["mode"] == "leave_one_out" and loo["auroc_mean"] == pytest.approx(out["auroc_mean"])


def test_ad_ovr_seed_spread_only_over_seeds_that_ran_every_class():
    records, _ = _ad_records(n_classes=2, seeds=(0, 1))
    records = [r for r in records if not (r.cls == 1 and r.seed == 1)]  # seed 1 misses class 1
    out = EVALUATORS.build("ad_ovr").evaluate(records)
    assert list(out["per_seed"]) == [0] and out["auroc_std_of_seed_means"] == 0.0
    assert out["per_class"][1]["seeds"] == [0] and out["per_class"][1]["auroc_std"] == 0.0


def test_ad_ovr_all_equal_scores_give_one_half():
    labels = np.r_[np.zeros(5), np.ones(7)]
    out = EVALUATORS.build("ad_ovr").evaluate([ADRecord("cat", 0, np.full(12, 3.0), labels)])
    assert out["auroc_mean"] == pytest.approx(0.5) == roc_auc_score(labels, np.full(12, 3.0))


def test_ad_ovr_refuses_bad_input_naming_method_dataset_class():
    ev = EVALUATORS.build("ad_ovr")
    bad = ADRecord(2, 0, np.array([0.1, np.nan, 0.3]), np.array([0, 1, 1]))
    with pytest.raises(DataError, match=r"'fcdd' on 'mnist' for class 2 \(seed 0\).*NaN"):
        ev.evaluate([bad], method="fcdd", dataset="mnist")
    inf = ADRecord(0, 0, np.array([0.1, np.inf]), np.array([0, 1]))
    with pytest.raises(DataError, match="infinite"):
        ev.evaluate([inf])
    with pytest.raises(DataError, match="only one is present"):
        ev.evaluate([ADRecord(0, 0, np.array([0.1, 0.2]), np.array([1, 1]))])
    with pytest.raises(DataError, match="labels must be 0"):
        ev.evaluate([ADRecord(0, 0, np.array([0.1, 0.2, 0.3]), np.array([0, 1, 2]))])
    with pytest.raises(DataError, match=r"\(3,\) scores but \(2,\) labels"):
        ev.evaluate([ADRecord(0, 0, np.array([0.1, 0.2, 0.3]), np.array([0, 1]))])
    ok = ADRecord(0, 0, np.array([0.1, 0.2]), np.array([0, 1]))
    with pytest.raises(DataError, match="given twice"):
        ev.evaluate([ok, ok])
    with pytest.raises(DataError, match="no results"):
        ev.evaluate([])
    with pytest.raises(Exception, match="mode"):
        EVALUATORS.build({"name": "ad_ovr", "mode": "one_vs_one"})


# ---------------------------------------------------------------- osr
def test_osr_auroc_and_closed_set_accuracy():
    conf = np.array([0.9, 0.8, 0.7, 0.2, 0.75, 0.1, 0.7])  # a known/unknown tie at 0.7
    known = np.array([1, 1, 1, 1, 0, 0, 0], dtype=bool)
    preds = np.array([0, 1, 2, 0, 1, 1, 0])
    labels = np.array([0, 1, 1, 0, -1, -1, -1])
    out = EVALUATORS.build("osr").evaluate(conf, preds, labels, known)
    assert out["auroc"] == pytest.approx(roc_auc_score(known, conf))
    assert out["closed_set_accuracy"] == pytest.approx(3 / 4)  # unknowns do not count
    assert (out["n_known"], out["n_unknown"]) == (4, 3)
    flat = EVALUATORS.build("osr").evaluate(np.zeros(7), preds, labels, known)
    assert flat["auroc"] == pytest.approx(0.5)


def test_osr_refuses_bad_input():
    ev = EVALUATORS.build("osr")
    preds, labels, known = np.array([0, 1]), np.array([0, 1]), np.array([True, False])
    with pytest.raises(DataError, match="postprocessor 'msp' on 'cifar10_split0'.*NaN or infinite"):
        ev.evaluate(np.array([np.inf, 1.0]), preds, labels, known, method="msp", split="cifar10_split0")
    with pytest.raises(DataError, match="only one is present"):
        ev.evaluate(np.array([0.3, 1.0]), preds, labels, np.array([True, True]))
    with pytest.raises(DataError, match="one length"):
        ev.evaluate(np.array([0.3, 1.0, 2.0]), preds, labels, known)


# ---------------------------------------------------------------- pixel
@pytest.mark.parametrize("chunk_pixels", [1, 97, 4_000_000])
def test_pixel_auroc_is_exact_with_ties_for_any_chunking(chunk_pixels):
    rng = np.random.default_rng(chunk_pixels)
    ev = EVALUATORS.build({"name": "pixel", "chunk_pixels": chunk_pixels})
    for frac in (0.05, 0.5, 0.95):  # anomalies the smaller class, balanced, and the larger class
        masks = (rng.random((5, 12, 10)) < frac).astype(np.uint8)
        heat = np.round(masks * 0.8 + rng.normal(0, 1, masks.shape), 1)  # rounded: many ties
        out = ev.evaluate(heat, masks)
        assert out["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), heat.ravel()), abs=1e-12)
        assert out["exact"] and out["n_pixels"] == masks.size and out["n_anomalous"] == int(masks.sum())


def test_pixel_all_equal_heat_memmap_and_subsampling(tmp_path):
    rng = np.random.default_rng(2)
    masks = rng.random((6, 16, 16)) > 0.7
    assert EVALUATORS.build("pixel").evaluate(np.zeros(masks.shape), masks)["pixel_auroc"] == pytest.approx(0.5)
    heat = np.lib.format.open_memmap(tmp_path / "heat.npy", mode="w+", dtype=np.float32, shape=masks.shape)
    heat[:] = masks + rng.normal(0, 0.8, masks.shape)
    heat.flush()
    heat = np.load(tmp_path / "heat.npy", mmap_mode="r")
    exact = EVALUATORS.build({"name": "pixel", "chunk_pixels": 300}).evaluate(heat, masks)
    assert exact["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), np.asarray(heat).ravel()), abs=1e-12)
    sub = EVALUATORS.build({"name": "pixel", "max_pixels": 200}).evaluate(heat, masks)
    assert not sub["exact"] and 100 < sub["n_sampled"] < 300
    assert abs(sub["pixel_auroc"] - exact["pixel_auroc"]) < 0.05


def test_pixel_refuses_bad_input():
    ev = EVALUATORS.build("pixel")
    heat, masks = np.random.default_rng(3).random((2, 8, 8)), np.zeros((2, 8, 8), np.uint8)
    masks[0, :2] = 1
    with pytest.raises(DataError, match="must both be"):
        ev.evaluate(heat, masks[:, :4])
    with pytest.raises(DataError, match="must both be"):
        ev.evaluate(heat[0], masks[0])
    with pytest.raises(DataError, match="only one is present"):
        ev.evaluate(heat, np.zeros_like(masks))
    with pytest.raises(DataError, match="binary"):
        ev.evaluate(heat, masks * 255)
    nan = heat.copy()
    nan[1, 3, 3] = np.nan
    with pytest.raises(DataError, match="'fcdd' on 'mvtec_bottle'.*NaN"):
        ev.evaluate(nan, masks, method="fcdd", split="mvtec_bottle")
