"""Every registered evaluator, built from its default config, evaluates tiny scores/labels: its metrics are in
range, and a perfectly separated case gets a perfect score (one test id per evaluator)."""

from __future__ import annotations

import numpy as np
import pytest

from openood_ext.evaluators import EVALUATORS
from sweep_helpers import builtin_names

FRACTION_METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95", "fpr95_openood", "f1_95")


def _in_unit(value) -> bool:
    return np.isfinite(value) and 0.0 <= value <= 1.0


def _ood(ev, rng):
    from openood_ext.evaluators.ood import SplitScores
    labels = np.array([0, 1, 2, 0, 1, 2])
    id_test = SplitScores(conf=rng.uniform(0.6, 1.0, 6), preds=labels.copy(), labels=labels)
    near = SplitScores(conf=rng.uniform(0.0, 0.4, 5), preds=rng.integers(0, 3, 5), labels=np.full(5, -1))
    far = SplitScores(conf=rng.uniform(0.0, 1.0, 7), preds=rng.integers(0, 3, 7), labels=np.full(7, -1))
    res = ev.evaluate("msp", id_test, {"near_a": ("near", near), "far_a": ("far", far)},
                      skipped={"far_b": ("far", "data missing")}, num_classes=3)
    assert res.summary["id_accuracy"] == pytest.approx(1.0)
    for name, values in res.summary["sets"].items():
        for metric in FRACTION_METRICS:
            assert _in_unit(values[metric]), (name, metric, values[metric])
    near_set = res.summary["sets"]["near_a"]
    assert near_set["auroc"] == pytest.approx(1.0) and near_set["fpr95"] == pytest.approx(0.0)
    assert set(res.summary["groups"]) == {"near", "far"} and res.summary["groups"]["far"]["partial"]
    assert res.rows and all(np.isfinite(r["value"]) for r in res.rows)


def _ad_ovr(ev, rng):
    from openood_ext.evaluators.ad_ovr import ADRecord
    labels = np.r_[np.zeros(4), np.ones(4)]
    records = [ADRecord(c, s, rng.normal(size=8) + (3 * labels if c == 0 else 0), labels)
               for c in range(2) for s in range(2)]
    out = ev.evaluate(records, method="toy", dataset="toy")
    assert out["n_classes"] == 2
    for key in ("auroc_mean", "auroc_std_over_classes", "auroc_std_over_seeds"):
        assert _in_unit(out[key]), key
    for entry in out["per_class"].values():
        assert all(_in_unit(a) for a in entry["aurocs"])
    separated = ev.evaluate([ADRecord(0, 0, labels + 0.5, labels)])
    assert separated["auroc_mean"] == pytest.approx(1.0)


def _osr(ev, rng):
    known = np.array([1, 1, 1, 1, 0, 0, 0], dtype=bool)
    labels = np.array([0, 1, 2, 0, 5, 5, 5])
    out = ev.evaluate(rng.uniform(size=7), labels.copy(), labels, known)
    assert _in_unit(out["auroc"]) and _in_unit(out["closed_set_accuracy"])
    assert out["closed_set_accuracy"] == pytest.approx(1.0) and (out["n_known"], out["n_unknown"]) == (4, 3)
    separated = ev.evaluate(known.astype(float), labels, labels, known)
    assert separated["auroc"] == pytest.approx(1.0)


def _pixel(ev, rng):
    masks = np.zeros((3, 8, 8), dtype=np.uint8)
    masks[:, 2:5, 2:5] = 1
    out = ev.evaluate(rng.uniform(size=(3, 8, 8)).astype(np.float32), masks)
    assert _in_unit(out["pixel_auroc"]) and out["n_pixels"] == 3 * 64 and out["n_anomalous"] == 27
    separated = ev.evaluate(masks.astype(np.float32) + rng.uniform(0, 0.5, masks.shape), masks)
    assert separated["pixel_auroc"] == pytest.approx(1.0)


# name -> (config overrides, case running the evaluator's contract on tiny inputs)
CASES = {
    "ad_ovr": ({}, _ad_ovr),
    "ood": ({}, _ood),
    "osr": ({}, _osr),
    "pixel": ({"chunk_pixels": 64}, _pixel),  # several chunks even on tiny maps
}


@pytest.mark.parametrize("name", builtin_names(EVALUATORS))
def test_registered_evaluator_metrics_in_range(name):
    assert name in CASES, f"evaluator {name!r} is registered but has no case in CASES"
    overrides, case = CASES[name]
    case(EVALUATORS.build({"name": name, **overrides}), np.random.default_rng(0))
