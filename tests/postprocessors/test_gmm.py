"""GMM against sklearn: the tied mixture fitted on a layer's (pooled, reduced) features, the score its log
density up to the constant sklearn adds; fitted from the shared pass's layer taps."""

import numpy as np
import pytest
import torch
from conftest import image_loader
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture
from zoo_helpers import build

from openood_ext.errors import ConfigError
from openood_ext.features import extract_outputs
from openood_ext.networks.small_cnn import DigitsCNN
from openood_ext.postprocessors.gmm import mixture_log_density
from openood_ext.postprocessors.layer_features import LayerTaps
from openood_ext.postprocessors.mds_ensemble import reduce_feature_map


@pytest.fixture(scope="module")
def net_and_data():
    torch.manual_seed(0)
    net = DigitsCNN(num_classes=3, in_channels=1, width=4).eval()
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(90, 1, 8, 8, generator=gen)
    test = torch.cat([torch.randn(20, 1, 8, 8, generator=gen), 3 + 2 * torch.randn(20, 1, 8, 8, generator=gen)])
    loaders = {"id_train": lambda: image_loader(train, torch.arange(90) % 3), "test": lambda: image_loader(test, torch.zeros(40).long())}
    return net, loaders, train, test


def _fit(net, loaders, **kw):
    pp = build("gmm", **kw)
    pp.attach_network(net, "cpu", lambda s: loaders[s]())
    return pp.fit()


def test_mixture_log_density_equals_sklearn_up_to_its_constant():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(60, 3)), rng.normal(size=(60, 3)) + 4])
    gm = GaussianMixture(2, covariance_type="tied", random_state=0).fit(x)
    ours = mixture_log_density(torch.from_numpy(x), torch.from_numpy(gm.means_), torch.from_numpy(gm.precisions_),
                               torch.from_numpy(gm.weights_)).numpy()
    const = -0.5 * (3 * np.log(2 * np.pi) + np.linalg.slogdet(gm.covariances_)[1])
    np.testing.assert_allclose(ours + const, gm.score_samples(x), rtol=1e-9)
    # OpenOOD's float32 density with its 1e-45 floor: equal near the data, one floor value far out
    near = mixture_log_density(torch.from_numpy(x[:5]), *(torch.from_numpy(a) for a in (gm.means_, gm.precisions_, gm.weights_)),
                               openood=True).numpy()
    np.testing.assert_allclose(near, ours[:5], rtol=1e-5)
    far = mixture_log_density(torch.full((3, 3), 100.0, dtype=torch.float64),
                              *(torch.from_numpy(a) for a in (gm.means_, gm.precisions_, gm.weights_)), openood=True)
    np.testing.assert_allclose(far.numpy(), np.log(np.float32(1e-45)), rtol=1e-6)


def test_gmm_fit_from_taps_equals_sklearn_on_the_same_features(net_and_data):
    net, loaders, train, test = net_and_data
    layer = "body.5"  # a ReLU: 8-channel 8x8 maps; stat pooling, PCA to 6, 2 components
    pp = _fit(net, loaders, layers=[layer], feature_type=["stat"], num_clusters=[2], reduce_dim=["pca_6"], alpha=[1.0],
              pca_solver="full", pca_dtype="float64")
    with torch.no_grad(), LayerTaps(net, [layer], transform=lambda t: reduce_feature_map(t, "stat").clone()) as taps:
        net(train)
        f_train = taps.pop()[0].double().numpy()
        net(test)
        f_test = taps.pop()[0].double().numpy()
    proj = PCA(n_components=6, svd_solver="full").fit(f_train).components_.T
    gm = GaussianMixture(2, covariance_type="tied", random_state=0).fit(f_train @ proj)
    conf = pp.score_loader(loaders["test"]())
    diff = conf - gm.score_samples(f_test @ proj)
    assert np.ptp(diff) < 1e-6 * np.abs(conf).max()  # equal up to sklearn's normalising constant
    assert conf[:20].mean() > conf[20:].mean()  # higher = more ID: the shifted images score lower


def test_gmm_float32_pca_spans_the_float64_subspace():
    # the default float32 fit against OpenOOD's float64 arithmetic, same seeded randomized solver
    rng = np.random.default_rng(0)
    feats = (rng.standard_normal((300, 40)) @ rng.standard_normal((40, 2000))).astype(np.float32)
    fits = {}
    for dtype in ("float32", "float64"):
        pp = build("gmm", layers=[0], feature_type=["flat"], num_clusters=[3], reduce_dim=["pca_10"], alpha=[1.0],
                   pca_solver="randomized", pca_dtype=dtype)
        pp.layer_names = ["x"]
        fits[dtype] = pp.fit_layer(0, feats)
    assert all(a.dtype == torch.float64 for a in fits["float32"])
    cosines = np.linalg.svd(fits["float32"][0].numpy().T @ fits["float64"][0].numpy(), compute_uv=False)
    assert cosines.min() > 1 - 1e-5
    assert build("gmm").pca_dtype == "float32"


def test_principal_axes_through_the_sample_gram_matrix_equal_sklearns_exact_pca():
    from openood_ext.postprocessors.common import principal_axes
    rng = np.random.default_rng(2)
    # a decaying spectrum around a large mean (as ReLU features): the centring matters
    feats = (rng.standard_normal((200, 30)) / np.arange(1, 31) @ rng.standard_normal((30, 900)) + 5).astype(np.float32)
    full = PCA(n_components=8, svd_solver="full").fit(feats.astype(np.float64)).components_.T
    np.testing.assert_allclose(principal_axes(feats, 8, "gram", "float64"), full, atol=1e-9)
    np.testing.assert_allclose(principal_axes(feats, 8, "gram", "float32"), full, atol=1e-4)
    np.testing.assert_allclose(principal_axes(feats, 8, "auto", "float64"), full, atol=1e-9)  # N <= 2048: gram
    # fewer directions with variance than axes asked (rank 3 after centring): sklearn completes the basis
    low = (rng.standard_normal((50, 3)) @ rng.standard_normal((3, 100))).astype(np.float64)
    axes = principal_axes(low, 5, "gram", "float64")
    np.testing.assert_allclose(axes.T @ axes, np.eye(5), atol=1e-9)
    np.testing.assert_allclose(axes, PCA(n_components=5, svd_solver="full").fit(low).components_.T, atol=1e-9)
    with pytest.raises(ValueError, match="pca_solver must be one of"):
        principal_axes(feats, 2, "arpack")


def test_gmm_auto_solver_is_the_gram_pca_on_small_splits_and_sklearns_above(monkeypatch):
    from openood_ext.postprocessors import common
    calls, fit = [], PCA.fit
    monkeypatch.setattr(PCA, "fit", lambda self, x: calls.append(self.svd_solver) or fit(self, x))
    rng = np.random.default_rng(3)
    feats = rng.standard_normal((60, 80)).astype(np.float32)
    common.principal_axes(feats, 4)
    assert calls == []  # the Gram path uses no sklearn PCA
    monkeypatch.setattr(common, "GRAM_PCA_MAX_SAMPLES", 59)
    common.principal_axes(feats, 4)
    assert calls == ["auto"]


def test_gmm_projection_in_row_blocks_equals_one_float64_product():
    from openood_ext.postprocessors.gmm import project_float64
    rng = np.random.default_rng(1)
    feats = rng.standard_normal((130, 300)).astype(np.float32)
    proj = rng.standard_normal((300, 7))
    np.testing.assert_allclose(project_float64(feats, proj, rows=64), feats.astype(np.float64) @ proj, rtol=1e-12)
    assert project_float64(feats[:0], proj).shape == (0, 7)


def test_gmm_rides_the_shared_pass_and_skips_zero_weight_layers(net_and_data):
    net, loaders, *_ = net_and_data
    pp = build("gmm", layers=["stem", 0, -1], feature_type=["mean", "mean", "mean"], num_clusters=[2, 1, 2],
               reduce_dim=["none", "none", "none"], alpha=[0, 0, 1])
    assert pp.uses_taps
    pp.attach_network(net, "cpu", lambda s: loaders[s]())
    consumer = pp.fit_taps(net, next(iter(loaders["id_train"]()))[0][:2])
    assert [t.layer for t in consumer.taps] == [pp.layer_names[2]]
    extract_outputs(net, loaders["id_train"](), consumers=[consumer])
    out = extract_outputs(net, loaders["test"](), consumers=[pp.score_taps()])
    np.testing.assert_allclose(out.tap_results[0], pp.score_loader(loaders["test"]()), rtol=1e-9)


@pytest.mark.parametrize("kw, match", [
    ({"alpha": [1, 1]}, "lists of one length"),
    ({"reduce_dim": ["none", "none", "pca_x"]}, "pca_<n>"),
    ({"feature_type": ["stat", "mean", "max"]}, "feature_type"),
    ({"num_clusters": [3, 0, 50]}, "num_clusters"),
    ({"alpha": [0, 0, 0]}, "every layer 0"),
    ({"density": "exact"}, "density")])
def test_gmm_bad_settings_are_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        build("gmm", **kw)
