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
        scores = rng.integers(0, 4, 50).astype(float)
        labels = rng.integers(0, 2, 50)
        if labels.min() == labels.max():
            continue
        assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert auroc(np.ones(10), np.r_[np.ones(5), np.zeros(5)]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="only one is present"):
        auroc(np.arange(4.0), np.ones(4))


def test_ad_ovr_aggregates_over_seeds_and_classes():
    rng = np.random.default_rng(1)
    records, expected = [], {}
    for cls in range(3):
        for seed in range(2):
            labels = np.r_[np.zeros(40), np.ones(60)]
            scores = rng.normal(labels * (cls + 0.5), 1.0)
            records.append(ADRecord(cls, seed, scores, labels))
            expected.setdefault(cls, []).append(roc_auc_score(labels, scores))
    out = EVALUATORS.build("ad_ovr").evaluate(records, method="hsc")
    for cls, values in expected.items():
        assert out["per_class"][cls]["auroc_mean"] == pytest.approx(np.mean(values))
        assert out["per_class"][cls]["auroc_std"] == pytest.approx(np.std(values))
    class_means = [np.mean(v) for v in expected.values()]
    assert out["auroc_mean"] == pytest.approx(np.mean(class_means))
    assert out["auroc_std_over_classes"] == pytest.approx(np.std(class_means))
    assert out["mode"] == "one_vs_rest"
    assert EVALUATORS.build({"name": "ad_ovr", "mode": "leave_one_out"}).evaluate(records)["mode"] == "leave_one_out"


def test_ad_ovr_refuses_nan_and_single_class():
    bad = ADRecord(2, 0, np.array([0.1, np.nan, 0.3]), np.array([0, 1, 1]))
    with pytest.raises(DataError, match="'fcdd' for class 2 .*NaN"):
        EVALUATORS.build("ad_ovr").evaluate([bad], method="fcdd")
    one = ADRecord(0, 0, np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(DataError, match="only one is present"):
        EVALUATORS.build("ad_ovr").evaluate([one])


def test_osr_auroc_and_closed_set_accuracy():
    conf = np.array([0.9, 0.8, 0.7, 0.2, 0.75, 0.1])
    known = np.array([1, 1, 1, 1, 0, 0], dtype=bool)
    preds = np.array([0, 1, 2, 0, 1, 1])
    labels = np.array([0, 1, 1, 0, -1, -1])
    out = EVALUATORS.build("osr").evaluate(conf, preds, labels, known)
    assert out["auroc"] == pytest.approx(roc_auc_score(known, conf))
    assert out["closed_set_accuracy"] == pytest.approx(3 / 4)
    with pytest.raises(DataError, match="postprocessor 'msp' on 'test'"):
        EVALUATORS.build("osr").evaluate(np.array([np.inf, 1.0]), preds[:2], labels[:2], known[:2], method="msp")


def test_pixel_auroc_exact_and_subsampled():
    rng = np.random.default_rng(2)
    masks = (rng.random((4, 16, 16)) > 0.8).astype(np.uint8)
    heat = masks + rng.normal(0, 0.7, masks.shape)
    exact = EVALUATORS.build("pixel").evaluate(heat, masks)
    assert exact["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), heat.ravel()))
    assert not exact["subsampled"] and exact["n_pixels"] == 4 * 16 * 16
    sub = EVALUATORS.build({"name": "pixel", "max_pixels": 500}).evaluate(heat, masks)
    assert sub["subsampled"] and sub["n_pixels"] == 500
    assert abs(sub["pixel_auroc"] - exact["pixel_auroc"]) < 0.06
    with pytest.raises(DataError, match="must both be"):
        EVALUATORS.build("pixel").evaluate(heat, masks[:, :8])
    with pytest.raises(DataError, match="only one is present"):
        EVALUATORS.build("pixel").evaluate(heat, np.zeros_like(masks))
