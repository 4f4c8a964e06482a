"""SSD against its definition, by hand: L2-normalise, standardise with the ID training statistics, per
cluster mean and (biased) covariance, the smallest squared Mahalanobis distance."""

import numpy as np
import pytest
from sklearn.cluster import KMeans
from zoo_helpers import build, outputs

from openood_ext.errors import ConfigError


def by_hand(train, test, assign):
    unit = lambda a: a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-10)  # noqa: E731
    tr, te = unit(train), unit(test)
    m, s = tr.mean(0), tr.std(0)
    tr, te = (tr - m) / (s + 1e-10), (te - m) / (s + 1e-10)
    dists = []
    for c in np.unique(assign):
        x = tr[assign == c]
        mu = x.mean(0)
        prec = np.linalg.pinv(np.cov(x.T, bias=True))
        dists.append(np.einsum("nd,de,ne->n", te - mu, prec, te - mu))
    return -np.min(dists, axis=0), tr


def test_ssd_one_cluster_and_labels_by_hand():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(80, 4)) + np.array([2.0, 0, 0, 0])
    labels = np.arange(80) % 2
    train[labels == 1] += np.array([0, 3.0, 0, 0])
    test = rng.normal(size=(12, 4)) * 2
    t32, q32 = (a.astype(np.float32).astype(np.float64) for a in (train, test))
    expected, _ = by_hand(t32, q32, np.zeros(80, dtype=int))
    np.testing.assert_allclose(build("ssd").fit(outputs(train)).score(outputs(test)), expected, rtol=1e-8)
    expected, _ = by_hand(t32, q32, labels)
    pp = build("ssd", use_labels=True).fit(outputs(train, labels=labels))
    np.testing.assert_allclose(pp.score(outputs(test)), expected, rtol=1e-8)


def test_ssd_kmeans_clusters_by_hand():
    rng = np.random.default_rng(1)
    train = np.concatenate([rng.normal(size=(50, 3)) + [3, 0, 0], rng.normal(size=(50, 3)) + [0, 3, 0]])
    test = rng.normal(size=(10, 3)) * 2
    t32, q32 = (a.astype(np.float32).astype(np.float64) for a in (train, test))
    _, standardised = by_hand(t32, q32, np.zeros(100, dtype=int))
    assign = KMeans(n_clusters=2, n_init=10, random_state=0).fit_predict(standardised)
    expected, _ = by_hand(t32, q32, assign)
    np.testing.assert_allclose(build("ssd", clusters=2).fit(outputs(train)).score(outputs(test)), expected, rtol=1e-6)


def test_ssd_sign_inliers_score_higher():
    rng = np.random.default_rng(2)
    train = rng.normal(size=(100, 3)) * [1.0, 0.2, 0.2] + [4.0, 1.0, 0.0]
    pp = build("ssd").fit(outputs(train))
    inlier, outlier = pp.score(outputs([[4.0, 1.0, 0.0], [0.0, -1.0, 4.0]]))
    assert inlier > outlier


def test_ssd_zero_clusters_is_a_config_error():
    with pytest.raises(ConfigError, match="'clusters': expected int >= 1"):
        build("ssd", clusters=0)
