"""OpenMax: the scipy Weibull path on hand cases, and agreement with libMR when it is installed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from openood_ext.features import NetOutputs
from openood_ext.postprocessors import POSTPROCESSORS
from openood_ext.postprocessors.openmax import TailWeibull, libmr_available, openmax_unknown_prob, weibull_mle


def weibull_loglik(y, scale, shape):
    return float(np.sum(stats.weibull_min.logpdf(y, shape, scale=scale)))


def test_weibull_mle_is_the_likelihood_maximum():
    y = stats.weibull_min.rvs(2.5, scale=3.0, size=40, random_state=np.random.default_rng(0))
    scale, shape = weibull_mle(y)
    best = weibull_loglik(y, scale, shape)
    for ds, dk in ((1.001, 1), (0.999, 1), (1, 1.001), (1, 0.999), (1.001, 1.001)):
        assert weibull_loglik(y, scale * ds, shape * dk) < best
    ref_shape, _, ref_scale = stats.weibull_min.fit(y, floc=0)
    assert shape == pytest.approx(ref_shape, rel=1e-3) and scale == pytest.approx(ref_scale, rel=1e-3)
    with pytest.raises(ValueError):
        weibull_mle(np.ones(5))


def test_tail_weibull_translation_hand_case():
    tail = np.array([4.0, 2.0, 3.0, 7.0])
    model = TailWeibull(tail)
    assert model.small_score == 2.0
    scale, shape = weibull_mle(tail + 1.0 - 2.0)  # libMR shifts the smallest tail value to 1
    assert (model.scale, model.shape) == (scale, shape)
    x = np.array([0.5, 2.0, 5.0])
    expected = [0.0,  # x + 1 - 2 < 0 -> 0
                1 - math.exp(-(1.0 / scale) ** shape), 1 - math.exp(-(4.0 / scale) ** shape)]
    np.testing.assert_allclose(model.w_score(x), expected, rtol=1e-12)
    assert not TailWeibull(np.array([3.0, 3.0])).valid  # degenerate tail: never rejects
    np.testing.assert_array_equal(TailWeibull(np.array([3.0, 3.0])).w_score(np.array([1.0, 9.0])), 0.0)


def test_openmax_unknown_probability_hand_case():
    # alpha 2: weights 1 (top logit) and 1/2 (second); third class untouched
    logits, w = np.array([[3.0, 1.0, 0.0]]), np.array([[0.5, 0.2, 1.0]])
    revised = [3.0 * (1 - 0.5), 1.0 * (1 - 0.2 * 0.5), 0.0]
    unknown = 3.0 - revised[0] + 1.0 - revised[1]
    expected = math.exp(unknown) / (sum(math.exp(v) for v in revised) + math.exp(unknown))
    np.testing.assert_allclose(openmax_unknown_prob(logits, w, alpha=2), [expected], rtol=1e-12)
    np.testing.assert_allclose(openmax_unknown_prob(logits, np.zeros_like(w), alpha=2),  # nothing rejected
                               [1.0 / (math.exp(3) + math.exp(1) + 1.0 + 1.0)], rtol=1e-12)


def _clustered_logits(seed=0, n=300, c=4):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % c
    logits = rng.normal(size=(n, c)) + 4.0 * np.eye(c)[labels]
    return NetOutputs(torch.tensor(logits, dtype=torch.float32), torch.zeros(n, 1), torch.tensor(labels)), rng


def test_openmax_scores_far_samples_as_less_id():
    train, _ = _clustered_logits()
    pp = POSTPROCESSORS.build({"name": "openmax", "backend": "scipy"}).fit(train)
    near = torch.tensor([[4.0, 0.0, 0.0, 0.0]])
    far = torch.tensor([[12.0, 9.0, -6.0, 0.0]])
    conf = pp.score(NetOutputs(torch.cat([near, far]), torch.zeros(2, 1)))
    assert -1 <= conf[1] < conf[0] <= 0


@pytest.mark.skipif(not libmr_available(), reason="libmr is not installed")
def test_scipy_weibull_agrees_with_libmr():
    import libmr
    train, rng = _clustered_logits(seed=1)
    for _ in range(3):
        tail = np.sort(rng.gamma(3.0, 1.0, size=20))
        mr = libmr.MR()
        mr.fit_high(tail, len(tail))
        x = np.linspace(tail.min() - 1, tail.max() + 2, 50)
        np.testing.assert_allclose(TailWeibull(tail).w_score(x), mr.w_score_vector(x), atol=5e-6)  # libMR root tol 1e-6
    test = NetOutputs(torch.tensor(rng.normal(scale=3, size=(200, 4)), dtype=torch.float32), torch.zeros(200, 1))
    scores = {b: POSTPROCESSORS.build({"name": "openmax", "backend": b}).fit(train).score(test)
              for b in ("libmr", "scipy")}
    np.testing.assert_allclose(scores["scipy"], scores["libmr"], atol=5e-6)
    assert np.ptp(scores["libmr"]) > 0.1  # the comparison is not between constants
