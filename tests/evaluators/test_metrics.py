"""OOD metrics against scikit-learn, scipy and hand-computed cases (ties included)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import mannwhitneyu
from sklearn import metrics as skm

from openood_ext.evaluators.metrics import accuracy, ood_metrics


def sklearn_reference(id_conf, ood_conf):
    conf = np.r_[id_conf, ood_conf]
    is_ood = np.r_[np.zeros(len(id_conf)), np.ones(len(ood_conf))]
    fpr, tpr, _ = skm.roc_curve(is_ood, -conf)
    p_in, r_in, _ = skm.precision_recall_curve(1 - is_ood, conf)
    p_out, r_out, _ = skm.precision_recall_curve(is_ood, -conf)
    return {"auroc": skm.roc_auc_score(is_ood, -conf), "aupr_in": skm.auc(r_in, p_in),
            "aupr_out": skm.auc(r_out, p_out), "fpr95_openood": fpr[np.argmax(tpr >= 0.95)]}


def brute_force_fpr95(id_conf, ood_conf):
    """Fraction of OOD accepted at the highest threshold that keeps >= 95% of ID (accept: conf >= t)."""
    for t in np.sort(np.unique(np.r_[id_conf, ood_conf]))[::-1]:
        if np.mean(id_conf >= t) >= 0.95:
            return np.mean(ood_conf >= t)
    raise AssertionError("unreachable")


@pytest.mark.parametrize("seed", range(40))
def test_matches_sklearn_with_heavy_ties(seed):
    rng = np.random.default_rng(seed)
    id_conf = rng.integers(0, 6, rng.integers(1, 60)).astype(float)
    ood_conf = rng.integers(-2, 4, rng.integers(1, 60)).astype(float)
    ours, ref = ood_metrics(id_conf, ood_conf), sklearn_reference(id_conf, ood_conf)
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key
    assert ours["fpr95"] == pytest.approx(brute_force_fpr95(id_conf, ood_conf), abs=1e-12)


def test_auroc_equals_mann_whitney_statistic():
    rng = np.random.default_rng(1)
    id_conf, ood_conf = rng.normal(1, 1, 500).round(1), rng.normal(0, 1, 300).round(1)
    u = mannwhitneyu(id_conf, ood_conf).statistic  # counts ties as 1/2
    assert ood_metrics(id_conf, ood_conf)["auroc"] == pytest.approx(u / (500 * 300), abs=1e-12)


def test_hand_computed_case():
    # ID: 4,3,2,1 ; OOD: 2.5, 0. Pairs (id > ood): 4 of them beat 0, 3 beat 2.5 (4,3) -> (4+2)/8
    m = ood_metrics(np.array([4.0, 3.0, 2.0, 1.0]), np.array([2.5, 0.0]))
    assert m["auroc"] == pytest.approx(6 / 8)
    # keeping >= 95% of 4 ID samples means keeping all of them: threshold 1 -> OOD 2.5 accepted, 0 not
    assert m["fpr95"] == pytest.approx(0.5)
    # OpenOOD's variant: catching >= 95% of OOD (both samples) means flagging every conf <= 2.5,
    # which rejects the ID samples with conf 2 and 1 -> 2/4
    is_ood = np.array([0, 0, 0, 0, 1, 1])
    fpr, tpr, _ = skm.roc_curve(is_ood, -np.array([4, 3, 2, 1, 2.5, 0.0]))
    assert m["fpr95_openood"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)])
    assert m["fpr95_openood"] == pytest.approx(0.5)


def test_perfect_and_inverted_separation():
    perfect = ood_metrics(np.array([5.0, 6, 7]), np.array([1.0, 2]))
    assert perfect == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0, "fpr95_openood": 0.0}
    inverted = ood_metrics(np.array([1.0, 2]), np.array([5.0, 6, 7]))
    assert inverted["auroc"] == 0.0 and inverted["fpr95"] == 1.0


def test_all_equal_scores():
    m = ood_metrics(np.ones(10), np.ones(30))
    assert m["auroc"] == pytest.approx(0.5)
    assert m["fpr95"] == 1.0  # keeping ID at a single shared threshold accepts every OOD sample
    assert m["aupr_in"] == pytest.approx(skm.auc(*skm.precision_recall_curve(np.r_[np.ones(10), np.zeros(30)], np.ones(40))[1::-1]))


@pytest.mark.parametrize("bad", [np.array([np.nan, 1.0]), np.array([np.inf, 0.0]), np.array([]), np.ones((2, 2))])
def test_invalid_scores_are_refused(bad):
    with pytest.raises(ValueError):
        ood_metrics(bad, np.array([0.0, 1.0]))


def test_accuracy():
    assert accuracy(np.array([1, 2, 3]), np.array([1, 0, 3])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        accuracy(np.array([1]), np.array([1, 2]))
