"""The postprocessor zoo: each formula on hand-computed inputs, known properties, and a smoke test of
every registered postprocessor (network-based ones on a tiny random DigitsCNN)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import REPO, image_loader
from sklearn.covariance import EmpiricalCovariance
from zoo_helpers import outputs as net_outputs

from openood_ext.features import NetOutputs, extract_outputs
from openood_ext.networks.small_cnn import DigitsCNN
from openood_ext.postprocessors import POSTPROCESSORS
from openood_ext.postprocessors.gradnorm import gradnorm_closed_form
from openood_ext.postprocessors.temp_scaling import nll_at

# ----------------------------------------------------------------------------- helpers


def outs(logits=None, features=None, labels=None, w=None, b=None) -> NetOutputs:
    """NetOutputs from lists/arrays; logits default to W z + b when W is given."""
    return net_outputs(features, w, b, labels, logits)


def build(name, **kw):
    return POSTPROCESSORS.build({"name": name, **kw})


def energy_np(logits: np.ndarray) -> np.ndarray:
    m = logits.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))[:, 0]


@pytest.fixture(scope="module")
def tiny_setup():
    """A tiny random DigitsCNN, random 8x8 images, the pipeline-style loaders and NetOutputs."""
    torch.manual_seed(0)
    net = DigitsCNN(num_classes=4, in_channels=1, width=2).eval()  # 8-d features
    gen = torch.Generator().manual_seed(1)
    splits = {}
    for name, n in (("id_train", 64), ("id_val", 24), ("id_test", 20), ("ood", 20)):
        x = torch.randn(n, 1, 8, 8, generator=gen) + (2.0 if name == "ood" else 0.0)
        y = torch.arange(n) % 4 if name != "ood" else torch.full((n,), -1)
        splits[name] = (x, y)
    loaders = {k: (lambda k=k: image_loader(*splits[k])) for k in splits}
    outputs = {k: extract_outputs(net, loaders[k](), "cpu") for k in splits}
    return net, loaders, outputs


# ----------------------------------------------------------------------------- smoke test


def test_every_registered_postprocessor_scores_finite(tiny_setup, device):
    import copy
    net, loaders, o = tiny_setup
    net = copy.deepcopy(net).to(device)  # network-based methods run on the device (the outputs stay on the CPU)
    # the built-in ones (other tests and plugins may register deliberately broken demo entries)
    names = [n for n in POSTPROCESSORS.names()
             if POSTPROCESSORS.get(n).__module__.startswith("openood_ext.postprocessors.")]
    assert {"temp_scaling", "odin", "mds", "mds_ensemble", "rmds", "gram", "gradnorm", "react", "mls", "klm",
            "vim", "dice", "ash", "she", "gen", "nnguide", "relation", "residual", "openmax", "npos",
            "msp", "ebo", "knn", "hsc"} <= set(names)
    for name in names:
        if name in ("ensemble", "dropout", "adascale"):
            continue  # need member checkpoints / dropout layers / more than 8 feature units: in the registry sweep
        pp = POSTPROCESSORS.build(name)
        if not all(callable(getattr(net, m, None)) for m in getattr(pp, "network_methods", ())):
            continue  # e.g. vmdls scores only its own network (tested in test_vmdls.py)
        if pp.needs_network or pp.uses_taps:
            pp.attach_network(net, device, lambda split: loaders[split]())
        pp.fit(o["id_train"], val_outputs=o["id_val"])
        for split in ("id_test", "ood"):
            conf = pp.score_loader(loaders[split]()) if pp.needs_network or pp.uses_taps else pp.score(o[split])
            conf = np.asarray(conf)
            assert conf.shape == (len(o[split]),), name
            assert conf.dtype.kind == "f" and np.isfinite(conf).all(), name
        doc = POSTPROCESSORS.describe(name)
        assert doc, f"{name} has no docstring summary"


# ----------------------------------------------------------------------------- logit-based


def test_temp_scaling_hand_case():
    # logits [2, 0] for all; 3 of 4 labelled 0 -> the NLL optimum has sigmoid(2/T) = 3/4 -> T = 2 / ln 3
    val = outs(logits=[[2.0, 0.0]] * 4, labels=[0, 0, 0, 1])
    pp = build("temp_scaling").fit(None, val_outputs=val)
    assert pp.temperature == pytest.approx(2 / math.log(3), rel=1e-6)
    conf = pp.score(outs(logits=[[2.0, 0.0], [0.0, 0.0]]))
    np.testing.assert_allclose(conf, [0.75, 0.5], rtol=1e-6)


def test_temp_scaling_is_nll_minimum_on_random_data():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 5, generator=gen) * 4
    labels = torch.randint(0, 5, (300,), generator=gen)
    labels[:150] = logits[:150].argmax(1)  # partly right, so T is finite
    t = build("temp_scaling").fit(None, val_outputs=NetOutputs(logits, torch.zeros(300, 1), labels)).temperature
    best = nll_at(logits, labels, t)
    for factor in (0.9, 0.99, 1.01, 1.1):
        assert nll_at(logits, labels, t * factor) > best


def test_mls_hand_case_and_shift():
    pp = build("mls")
    np.testing.assert_allclose(pp.score(outs(logits=[[1.0, 3.0, -2.0], [0.5, 0.1, 0.2]])), [3.0, 0.5])
    base = torch.randn(20, 4)
    shift = pp.score(NetOutputs(base + 2.5, torch.zeros(20, 1))) - pp.score(NetOutputs(base, torch.zeros(20, 1)))
    np.testing.assert_allclose(shift, 2.5, rtol=1e-5)


def test_gen_hand_case():
    p = [0.5, 0.3, 0.2]
    logits = [[math.log(v) for v in p]]
    g = 0.1
    expected = -sum(v ** g * (1 - v) ** g for v in p)
    np.testing.assert_allclose(build("gen").score(outs(logits=logits)), [expected], rtol=1e-6)
    top2 = -sum(v ** 0.5 * (1 - v) ** 0.5 for v in (0.5, 0.3))
    np.testing.assert_allclose(build("gen", gamma=0.5, M=2).score(outs(logits=logits)), [top2], rtol=1e-6)


def test_klm_hand_case():
    # validation: two samples predicted class 0 with softmax (.8,.2) and (.6,.4) -> template (.7,.3);
    # class 1 never predicted -> one-hot template (0, 1)
    val = outs(logits=[[math.log(.8), math.log(.2)], [math.log(.6), math.log(.4)]], labels=[0, 0])
    pp = build("klm").fit(None, val_outputs=val)
    q = (0.5, 0.5)
    kl0 = q[0] * math.log(q[0] / 0.7) + q[1] * math.log(q[1] / 0.3)  # KL to (0,1) is +inf
    np.testing.assert_allclose(pp.score(outs(logits=[[0.0, 0.0]])), [-kl0], rtol=1e-6)
    # a sample equal to the template has KL 0
    np.testing.assert_allclose(pp.score(outs(logits=[[math.log(.7), math.log(.3)]])), [0.0], atol=1e-6)


def test_gradnorm_closed_form_equals_autograd():
    gen = torch.Generator().manual_seed(3)
    c, d = 7, 11
    w = torch.randn(c, d, generator=gen, dtype=torch.float64)
    b = torch.randn(c, generator=gen, dtype=torch.float64)
    z = torch.randn(5, d, generator=gen, dtype=torch.float64).relu()
    conf = build("gradnorm").score(NetOutputs((z @ w.T + b).float(), z.float()))
    for i in range(len(z)):
        wi = w.clone().requires_grad_(True)
        logp = torch.log_softmax(wi @ z[i] + b, dim=0)
        kl = (-logp / c).sum() - math.log(c)  # KL(u || softmax)
        (grad,) = torch.autograd.grad(kl, wi)
        assert conf[i] == pytest.approx(float(grad.abs().sum()), rel=1e-5)
        # OpenOOD's loss (target 1 per class) gives exactly C times the same norm
        wj = w.clone().requires_grad_(True)
        (grad_oo,) = torch.autograd.grad(-torch.log_softmax(wj @ z[i] + b, dim=0).sum(), wj)
        assert float(grad_oo.abs().sum()) == pytest.approx(c * conf[i], rel=1e-5)
    np.testing.assert_allclose(gradnorm_closed_form(z @ w.T + b, z).numpy(), conf, rtol=1e-6)


# ----------------------------------------------------------------------------- feature-based


def test_mds_hand_case_1d():
    # class 0 at {-1, 1} (mean 0), class 1 at {9, 11} (mean 10); within-class variance 1
    train = outs(logits=[[1, 0], [1, 0], [0, 1], [0, 1]], features=[[-1.0], [1.0], [9.0], [11.0]], labels=[0, 0, 1, 1])
    pp = build("mds").fit(train)
    np.testing.assert_allclose(pp.score(outs(logits=[[0, 0]] * 2, features=[[2.0], [7.0]])), [-4.0, -9.0], rtol=1e-9)


def test_rmds_hand_case_1d():
    train = outs(logits=[[1, 0], [1, 0], [0, 1], [0, 1]], features=[[-1.0], [1.0], [9.0], [11.0]], labels=[0, 0, 1, 1])
    pp = build("rmds").fit(train)
    # background: mean 5, variance (36 + 16 + 16 + 36) / 4 = 26
    md0 = (2.0 - 5.0) ** 2 / 26.0
    np.testing.assert_allclose(pp.score(outs(logits=[[0, 0]], features=[[2.0]])), [-(4.0 - md0)], rtol=1e-9)


def test_mds_matches_sklearn_on_gaussian_data():
    rng = np.random.default_rng(0)
    d, k = 6, 3
    a = rng.normal(size=(d, d))
    means = rng.normal(scale=4, size=(k, d))
    y = np.repeat(np.arange(k), 200)
    x = means[y] + rng.normal(size=(len(y), d)) @ a.T
    train = outs(logits=np.zeros((len(y), k)), features=x, labels=y)
    test_x = rng.normal(scale=3, size=(40, d))
    conf = build("mds").fit(train).score(outs(logits=np.zeros((40, k)), features=test_x))
    x32 = x.astype(np.float32).astype(np.float64)  # NetOutputs keeps float32 features
    mu = np.stack([x32[y == c].mean(0) for c in range(k)])
    ec = EmpiricalCovariance(assume_centered=True).fit(x32 - mu[y])
    t32 = test_x.astype(np.float32).astype(np.float64)
    ref = -np.min(np.stack([ec.mahalanobis(t32 - mu[c]) for c in range(k)], axis=1), axis=1)
    np.testing.assert_allclose(conf, ref, rtol=1e-7)


def test_react_percentile_100_equals_ebo_and_clipping_hand_case():
    gen = torch.Generator().manual_seed(0)
    w, b = torch.randn(3, 5, generator=gen), torch.randn(3, generator=gen)
    z = torch.randn(40, 5, generator=gen).relu()
    o = outs(features=z.numpy(), w=w.numpy(), b=b.numpy())
    react = build("react", percentile=100).fit(o, val_outputs=o)
    np.testing.assert_allclose(react.score(o), build("ebo").score(o), rtol=1e-6, atol=1e-6)
    # hand case: threshold = 50th percentile of {0,1,2,3} = 1.5; z = [3, 0.5] -> [1.5, 0.5]
    fit = outs(features=[[0.0, 1.0], [2.0, 3.0]], w=[[1.0, 0.0], [0.0, 2.0]])
    pp = build("react", percentile=50, fit_on="train").fit(fit)
    assert pp.threshold == pytest.approx(1.5)
    np.testing.assert_allclose(pp.score(outs(features=[[3.0, 0.5]], w=[[1.0, 0.0], [0.0, 2.0]])),
                               energy_np(np.array([[1.5, 1.0]])), rtol=1e-6)
    val_fit = build("react", percentile=50, fit_on="val").fit(o, val_outputs=fit)
    assert val_fit.threshold == pytest.approx(1.5)


def test_dice_hand_case():
    w = np.array([[1.0, -2.0, 3.0], [0.5, 4.0, -1.0]])
    train = outs(features=[[1.0, 1.0, 2.0], [3.0, 1.0, 0.0]], w=w)  # mean feature (2, 1, 1)
    # contributions: [[2, -2, 3], [1, 4, -1]]; 50th percentile of them = 1.5 -> keep 2, 3, 4
    pp = build("dice", p=50).fit(train)
    masked = np.array([[1.0, 0.0, 3.0], [0.0, 4.0, 0.0]])
    z = np.array([[1.0, 2.0, 0.5]])
    np.testing.assert_allclose(pp.score(outs(features=z, w=w)), energy_np(z @ masked.T), rtol=1e-6)


def test_ash_b_hand_case():
    w = np.array([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    z = np.array([[4.0, 3.0, 1.0, 0.0]])
    # percentile 50 of D=4 -> keep k=2 largest (indices 0, 1), each set to sum/k = 8/2 = 4
    shaped = np.array([[4.0, 4.0, 0.0, 0.0]])
    np.testing.assert_allclose(build("ash", percentile=50).score(outs(features=z, w=w)),
                               energy_np(shaped @ w.T), rtol=1e-6)


def _vim_case():
    """3-d features around u: a full factorial design, so the second-moment matrix is exactly diagonal
    with eigenvalues 13 (axis 1) > 9 (axis 2) > 0.25 (axis 3); W invertible."""
    grid = np.array(np.meshgrid([-5.0, -1.0, 1.0, 5.0], [-3.0, 3.0], [-0.5, 0.0, 0.5], indexing="ij"))
    z = grid.reshape(3, -1).T * np.array([1.0, 1.0, np.sqrt(1.5)])  # third axis: mean square 0.25
    w = np.array([[1.0, 0.5, 0.0], [-0.5, 1.0, 0.2], [0.3, -0.2, 1.0]])
    b = np.array([0.1, -0.2, 0.3])
    u = -np.linalg.solve(w, b)
    return z + u, w, b, u  # train features centred at u (the zero-logit point)


def test_vim_and_residual_on_constructed_case():
    z, w, b, u = _vim_case()
    train = outs(features=z, w=w, b=b)
    test = np.array([[1.0, 2.0, 0.0], [1.0, 2.0, 3.0]]) + u
    z32 = z.astype(np.float32).astype(np.float64)
    # principal space (dim 2) = first two axes, so the residual is |third coordinate - u_3|
    vim = build("vim", dim=2).fit(train)
    logits_train = z32 @ w.T + b
    alpha = logits_train.max(1).mean() / np.abs(z32[:, 2] - u[2]).mean()
    assert vim.alpha == pytest.approx(alpha, rel=1e-4)
    t32 = test.astype(np.float32).astype(np.float64)
    expected = energy_np(t32 @ w.T + b) - alpha * np.abs(t32[:, 2] - u[2])
    np.testing.assert_allclose(vim.score(outs(features=test, w=w, b=b)), expected, rtol=1e-4)
    res = build("residual", dim=2, fit_on="train").fit(train)
    np.testing.assert_allclose(res.score(outs(features=test, w=w, b=b)), -np.abs(t32[:, 2] - u[2]), atol=1e-5)
    # logits at u are all zero: u is ViM's origin
    np.testing.assert_allclose(u @ w.T + b, 0.0, atol=1e-12)


def test_vim_falls_back_to_half_dim_when_dim_exceeds_features():
    z, w, b, _ = _vim_case()
    vim = build("vim").fit(outs(features=z, w=w, b=b))  # default dim 256 > D = 3
    assert vim.dim == 256 and vim.dim_used == 1


def test_she_hand_case():
    train = outs(logits=[[2, 0], [2, 0], [0, 2], [2, 0]], features=[[1.0, 0.0], [3.0, 2.0], [0.0, 5.0], [9.0, 9.0]],
                 labels=[0, 0, 1, 1])
    # class 0 pattern: mean of samples 0, 1 = (2, 1); class 1: only sample 2 is correct -> (0, 5)
    pp = build("she").fit(train)
    test = outs(logits=[[1, 0], [0, 1]], features=[[1.0, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(pp.score(test), [3.0, 5.0])
    np.testing.assert_allclose(build("she", metric="euclidean").fit(train).score(test),
                               [-math.sqrt(1.0), -math.sqrt(1.0 + 16.0)])


def test_nnguide_hand_case():
    w = np.array([[1.0, 0.0], [0.0, 1.0]])
    train = outs(features=[[3.0, 0.0], [0.0, 2.0]], w=w)
    # alpha 1 and K 1: the bank is the whole training set; guide_i = E_i * z_i/|z_i|
    e_train = energy_np(np.array([[3.0, 0.0], [0.0, 2.0]]))
    pp = build("nnguide", K=1, alpha=1.0).fit(train)
    z = np.array([[1.0, 1.0]])
    unit = z / np.linalg.norm(z)
    best = max(unit[0, 0] * e_train[0], unit[0, 1] * e_train[1])
    np.testing.assert_allclose(pp.score(outs(features=z, w=w)), energy_np(z @ w.T) * best, rtol=1e-6)
    # K = 2 averages both guides
    pp2 = build("nnguide", K=2, alpha=1.0).fit(train)
    mean = (unit[0, 0] * e_train[0] + unit[0, 1] * e_train[1]) / 2
    np.testing.assert_allclose(pp2.score(outs(features=z, w=w)), energy_np(z @ w.T) * mean, rtol=1e-6)


def test_relation_hand_case():
    # two training samples, unit features e1, e2, softmax (.9,.1) and (.2,.8)
    train = outs(logits=[[math.log(.9), math.log(.1)], [math.log(.2), math.log(.8)]], features=[[2.0, 0.0], [0.0, 1.0]])
    f = np.array([0.6, 0.8])
    p = np.array([0.5, 0.5])
    r = np.array([max(f @ [1, 0], 0) * (p @ [.9, .1]), max(f @ [0, 1], 0) * (p @ [.2, .8])])  # 0.3, 0.4
    test = outs(logits=[[0.0, 0.0]], features=[f * 5])
    np.testing.assert_allclose(build("relation").fit(train).score(test), [r.sum()], rtol=1e-6)
    np.testing.assert_allclose(build("relation", pow=2).fit(train).score(test), [(r ** 2).sum()], rtol=1e-6)
    # edges at or below the 0.03 threshold are dropped
    np.testing.assert_allclose(build("relation", threshold=0.35).fit(train).score(test), [0.4], rtol=1e-6)


def test_npos_is_knn_on_normalised_embeddings_and_scale_invariant():
    gen = torch.Generator().manual_seed(0)
    train, test = torch.randn(100, 8, generator=gen), torch.randn(10, 8, generator=gen)
    tr, te = NetOutputs(torch.zeros(100, 2), train), NetOutputs(torch.zeros(10, 2), test)
    npos = build("npos", k=5).fit(tr).score(te)
    np.testing.assert_allclose(npos, build("knn", k=5).fit(tr).score(te))
    scaled = build("npos", k=5).fit(NetOutputs(torch.zeros(100, 2), train * 9))
    scaled = scaled.score(NetOutputs(torch.zeros(10, 2), test * 0.1))
    np.testing.assert_allclose(scaled, npos, atol=1e-5)


# ----------------------------------------------------------------------------- configs


def test_postprocessor_configs_build_and_grids_name_constructor_arguments():
    import inspect

    from omegaconf import OmegaConf

    files = sorted((REPO / "configs" / "postprocessors").glob("*.yml"))
    assert {f.stem for f in files} >= {"knn", "ebo", "odin", "react", "vim", "ash", "gen", "mds_ensemble", "gram"}
    for f in files:
        spec = OmegaConf.to_container(OmegaConf.load(f), resolve=True)
        assert spec["name"] == f.stem, f
        grid = spec.pop("aps_grid", {})  # a method may have nothing to search
        pp = POSTPROCESSORS.build(spec)
        accepted = set(inspect.signature(type(pp).__init__).parameters)
        assert set(grid) <= accepted, f
        for key, values in grid.items():
            assert isinstance(values, list) and values, f
            for v in values:  # every grid point is a valid constructor argument
                POSTPROCESSORS.build({**spec, key: v})
