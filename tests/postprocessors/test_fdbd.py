"""fDBD against its definition: mean over c != yhat of |l_yhat - l_c| / ||w_yhat - w_c||, over ||z - mu_train||."""

import numpy as np
import pytest
from zoo_helpers import build, outputs

from openood_ext.errors import ConfigError


def by_hand(z, w, b, mu, reduce="mean", normalizer="distance_to_mean"):
    out = []
    for x in z:
        logits = w @ x + b
        p = int(np.argmax(logits))
        terms = [abs(logits[p] - logits[c]) / np.linalg.norm(w[p] - w[c]) for c in range(len(w)) if c != p]
        total = np.mean(terms) if reduce == "mean" else np.sum(terms)
        out.append(total / (np.linalg.norm(x - mu) if normalizer == "distance_to_mean" else np.linalg.norm(x)))
    return np.array(out)


def test_fdbd_hand_case_and_switches():
    rng = np.random.default_rng(1)
    w, b = rng.normal(size=(4, 3)), rng.normal(size=4)
    train, test = rng.normal(size=(30, 3)), rng.normal(size=(10, 3))
    mu = train.astype(np.float32).astype(np.float64).mean(0)
    for kw in ({}, {"reduce": "sum"}, {"normalizer": "norm"}):
        pp = build("fdbd", **kw).fit(outputs(train, w, b))
        np.testing.assert_allclose(pp.score(outputs(test, w, b)), by_hand(test.astype(np.float32), w.astype(np.float32),
                                                                          b.astype(np.float32), mu, **kw), rtol=1e-5)


def test_fdbd_sign_far_from_boundaries_scores_higher():
    w = np.array([[1.0, 0.0], [-1.0, 0.0]])  # boundary: x = 0
    train = np.array([[2.0, 1.0], [-2.0, -1.0]])  # mean (0, 0)
    pp = build("fdbd").fit(outputs(train, w))
    near, far = pp.score(outputs([[0.1, 1.0], [1.0, 0.0]], w))
    assert far > near  # same distance to the mean, farther from the decision boundary: more ID


def test_fdbd_bad_switch_is_a_config_error():
    with pytest.raises(ConfigError, match="normalizer"):
        build("fdbd", normalizer="mean")
