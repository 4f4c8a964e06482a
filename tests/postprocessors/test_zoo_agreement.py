"""Streaming tap fits equal the whole-split computation; NNGuide / MDSEns / TempScale against
small cases written from OpenOOD v1.5's definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import image_loader

from openood_ext.errors import ConfigError
from openood_ext.features import NetOutputs, extract_outputs
from openood_ext.networks.resnet import ResNet18_32x32
from openood_ext.postprocessors import POSTPROCESSORS
from openood_ext.postprocessors.common import class_gaussians
from openood_ext.postprocessors.mds_ensemble import ClassGaussianStream
from openood_ext.postprocessors.temp_scaling import nll_at

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    net = ResNet18_32x32(num_classes=3, width=4).eval()
    for m in net.modules():  # non-trivial BN statistics so layers differ from their inputs
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    gen = torch.Generator().manual_seed(3)
    data = {"id_train": (torch.randn(48, 3, 32, 32, generator=gen), torch.arange(48) % 3),
            "test": (torch.randn(12, 3, 32, 32, generator=gen), torch.arange(12) % 3)}
    loaders = lambda split: image_loader(*data[split], batch_size=10)
    return net, loaders, data


def test_class_gaussian_stream_equals_whole_split_fit():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(103, 6, generator=gen, dtype=torch.float64) * 0.1 + 50.0  # far from 0: cancellation-prone
    y = torch.randint(0, 4, (103,), generator=gen)
    y[:5] = -1  # OOD rows are ignored
    stream = ClassGaussianStream()
    for xb, yb in zip(x.split(17), y.split(17)):
        stream.add(xb, yb)
    got, ref = stream.gaussians(), class_gaussians(x, y)
    assert torch.equal(got.classes, ref.classes)
    torch.testing.assert_close(got.means, ref.means, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.precision, ref.precision, rtol=1e-7, atol=1e-6)


def _openood_gram(feature: torch.Tensor, p: int) -> torch.Tensor:
    """OpenOOD's G_p: full Gram matrix, row sums, signed p-th root (float64 here)."""
    t = feature.double().pow(p).reshape(feature.shape[0], feature.shape[1], -1)
    s = (t @ t.transpose(1, 2)).sum(dim=2)
    return s.sign() * s.abs().pow(1.0 / p)


def test_streaming_gram_equals_whole_split_computation(resnet):
    net, loaders, data = resnet
    gram = POSTPROCESSORS.build({"name": "gram", "layers": ["layer1:input", "layer2", "layer4"], "powers": [1, 3]})
    gram.attach_network(net, CPU, loaders)
    gram.fit(extract_outputs(net, loaders("id_train")))
    x, y = data["id_train"]
    held = gram._holdout_mask(y)
    # whole split at once, OpenOOD's definitions
    feats = {}
    hooks = [net.layer1.register_forward_pre_hook(lambda m, i: feats.__setitem__("stem", i[0].clone())),
             net.layer2.register_forward_hook(lambda m, i, o: feats.__setitem__("l2", o.clone())),
             net.layer4.register_forward_hook(lambda m, i, o: feats.__setitem__("l4", o.clone()))]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    norms = []
    for l, name in enumerate(("stem", "l2", "l4")):
        dev = torch.zeros(int(held.sum()), dtype=torch.float64)
        for pi, p in enumerate((1, 3)):
            g = _openood_gram(feats[name], p)
            for c in range(3):
                rows = g[(y == c) & ~held]
                torch.testing.assert_close(gram._mins[l][pi][c].double(), rows.min(0).values, rtol=2e-5, atol=1e-5)
                torch.testing.assert_close(gram._maxs[l][pi][c].double(), rows.max(0).values, rtol=2e-5, atol=1e-5)
            hg, hy = g[held], y[held]
            mins, maxs = gram._mins[l][pi][hy].double(), gram._maxs[l][pi][hy].double()
            dev += ((mins - hg).clamp_min(0) / (mins + 1e-6).abs()).sum(1) + ((hg - maxs).clamp_min(0) / (maxs + 1e-6).abs()).sum(1)
        norms.append(float(dev.mean()))
    assert held.any()
    np.testing.assert_allclose(gram._norm, norms, rtol=1e-4)
    # streaming scores (batches of 10) equal scoring the whole split in one batch
    whole = gram.score_loader(image_loader(*data["test"], batch_size=len(data["test"][0])))
    np.testing.assert_allclose(gram.score_loader(loaders("test")), whole, rtol=1e-6)


def test_mds_ensemble_stream_fit_equals_whole_split_and_stem_is_openood_feature0(resnet):
    net, loaders, data = resnet
    pp = POSTPROCESSORS.build({"name": "mds_ensemble", "noise": 0.0})
    pp.attach_network(net, CPU, loaders)
    pp.fit()
    assert pp.layer_names == ["layer1:input"]  # OpenOOD's feature_list[0] = relu(bn1(conv1(x)))
    x, y = data["id_train"]
    with torch.no_grad():
        stem = torch.relu(net.bn1(net.conv1(x))).mean((2, 3))
    ref = class_gaussians(stem, y)
    torch.testing.assert_close(pp._gauss[0].means, ref.means, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pp._gauss[0].precision, ref.precision, rtol=1e-3, atol=1e-3)


def _openood_mds_score(net, x, means, prec, noise, std=0.5):
    """OpenOOD's compute_Mahalanobis_score on feature_list[0] with 'mean' pooling, written out."""
    x = x.clone().requires_grad_(True)
    f = torch.relu(net.bn1(net.conv1(x))).mean((2, 3)).double()
    gau = torch.stack([-0.5 * (((f.detach() - m) @ prec) * (f.detach() - m)).sum(1) for m in means], 1)
    pred = gau.argmax(1)
    zero = f - means[pred]
    loss = torch.mean(0.5 * ((zero @ prec) * zero).sum(1))
    loss.backward()
    grad = (torch.ge(x.grad, 0).float() - 0.5) * 2 / std
    with torch.no_grad():
        f2 = torch.relu(net.bn1(net.conv1(x.detach() - noise * grad))).mean((2, 3)).double()
    return torch.stack([-0.5 * (((f2 - m) @ prec) * (f2 - m)).sum(1) for m in means], 1).max(1).values


def test_mds_ensemble_scores_follow_openood_definition(resnet):
    net, loaders, data = resnet
    pp = POSTPROCESSORS.build({"name": "mds_ensemble", "noise": 0.01, "input_std": 0.5})
    pp.attach_network(net, CPU, loaders)
    pp.fit()
    g = pp._gauss[0]
    ref = _openood_mds_score(net, data["test"][0], g.means, g.precision, 0.01)
    np.testing.assert_allclose(pp.score_loader(loaders("test")), ref.numpy(), rtol=1e-5)
    # two layers: one batched perturbed pass gives each layer's own single-layer score
    both = POSTPROCESSORS.build({"name": "mds_ensemble", "noise": 0.01, "input_std": 0.5,
                                 "layers": ["stem", "layer2"], "alpha": [1.0, 0.5]})
    both.attach_network(net, CPU, loaders)
    both.fit()
    second = POSTPROCESSORS.build({"name": "mds_ensemble", "noise": 0.01, "input_std": 0.5, "layers": ["layer2"]})
    second.attach_network(net, CPU, loaders)
    second.fit()
    np.testing.assert_allclose(both.score_loader(loaders("test")),
                               pp.score_loader(loaders("test")) + 0.5 * second.score_loader(loaders("test")),
                               rtol=1e-5)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # the reference call uses scikit-learn's moving defaults
def test_mds_ensemble_alpha_fit_is_logistic_regression_on_layer_scores(resnet):
    from sklearn.linear_model import LogisticRegressionCV
    net, loaders, data = resnet
    splits = {"id_train": loaders("id_train"), "id_val": loaders("test"),
              "ood_val": image_loader(data["test"][0] * 3 + 1, torch.full((12,), -1), batch_size=10)}
    pp = POSTPROCESSORS.build({"name": "mds_ensemble", "noise": 0.0, "layers": ["stem", "layer3"], "alpha": "fit"})
    pp.attach_network(net, CPU, lambda s: splits[s] if s != "ood_val" else image_loader(
        data["test"][0] * 3 + 1, torch.full((12,), -1), batch_size=10))
    pp.fit()
    s_in, s_out = pp.layer_scores(loaders("test")), pp.layer_scores(splits["ood_val"])
    lr = LogisticRegressionCV().fit(np.concatenate([s_in, s_out]).astype(np.float32),
                                    np.r_[np.ones(12), np.zeros(12)])
    np.testing.assert_allclose(pp.alpha, lr.coef_.reshape(-1), rtol=1e-6)


def test_nnguide_first_batch_bank_is_openoods():
    pp = POSTPROCESSORS.build({"name": "nnguide", "bank": "first_batch"})
    assert len(pp.bank_indices(5000)) == 200  # int(0.01 * 5000) = 50 < one batch of 200
    pp128 = POSTPROCESSORS.build({"name": "nnguide", "bank": "first_batch", "bank_batch_size": 128})
    # OpenOOD stops once batches * 128 > int(0.01 * 50000) = 500: 4 batches
    assert torch.equal(pp128.bank_indices(50000), torch.arange(512))
    # the score: logsumexp(logits) * mean of the K largest <z/|z|, bank guide>, guide = lse * z/|z|
    gen = torch.Generator().manual_seed(0)
    train = NetOutputs(torch.randn(400, 3, generator=gen), torch.randn(400, 5, generator=gen), torch.arange(400) % 3)
    test = NetOutputs(torch.randn(7, 3, generator=gen), torch.randn(7, 5, generator=gen))
    pp = POSTPROCESSORS.build({"name": "nnguide", "bank": "first_batch", "K": 3, "alpha": 0.5,
                               "bank_batch_size": 150}).fit(train)
    assert pp.bank_size == 300  # int(200) // 150 + 1 = 2 batches
    z = train.features[:300].double()
    guide = z / z.norm(dim=1, keepdim=True) * torch.logsumexp(train.logits[:300].double(), 1)[:, None]
    q = test.features.double() / test.features.double().norm(dim=1, keepdim=True)
    ref = (q @ guide.T).topk(3, dim=1).values.mean(1) * torch.logsumexp(test.logits.double(), 1)
    np.testing.assert_allclose(pp.score(test), ref.numpy(), rtol=1e-9)
    with pytest.raises(ConfigError, match="bank must be"):
        POSTPROCESSORS.build({"name": "nnguide", "bank": "first"})


def test_temp_scaling_reaches_the_nll_minimum_openoods_lbfgs_misses():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 10, generator=gen) * 4
    labels = torch.randint(0, 10, (500,), generator=gen)
    labels[:300] = logits[:300].argmax(1)
    pp = POSTPROCESSORS.build("temp_scaling").fit(None, val_outputs=NetOutputs(logits, logits[:, :2], labels))
    # OpenOOD: one LBFGS(lr=0.01, max_iter=50) step from T = 1.5
    t = torch.nn.Parameter(torch.ones(1) * 1.5)
    opt = torch.optim.LBFGS([t], lr=0.01, max_iter=50)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / t, labels)
        loss.backward()
        return loss

    opt.step(closure)
    ours, openood = nll_at(logits, labels, pp.temperature), nll_at(logits, labels, float(t.detach()))
    assert ours < openood - 0.1
    eps = 1e-3  # ours is the minimum: both neighbours are worse
    assert ours <= min(nll_at(logits, labels, pp.temperature * math.exp(eps)),
                       nll_at(logits, labels, pp.temperature * math.exp(-eps)))


def test_temp_scaling_without_a_minimum_falls_back_to_t1():
    # every validation sample right: the NLL decreases all the way to T -> 0, no minimiser
    val = NetOutputs(torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 0.5]]), torch.zeros(3, 2), torch.tensor([0, 1, 0]))
    assert POSTPROCESSORS.build("temp_scaling").fit(None, val_outputs=val).temperature == 1.0


def test_odin_grid_reuses_the_clean_pass_and_equals_single_settings():
    torch.manual_seed(0)
    from openood_ext.networks.small_cnn import DigitsCNN
    net = DigitsCNN(num_classes=3, in_channels=1, width=2).eval()
    x = torch.randn(20, 1, 8, 8)
    loader = lambda: image_loader(x, torch.zeros(20, dtype=torch.long), batch_size=8)
    settings = [(1.0, 0.0014), (1.0, 0.01), (100.0, 0.01)]
    grid = POSTPROCESSORS.build({"name": "odin"})
    grid.attach_network(net, CPU, None)
    joint = grid.grid_scores(loader(), settings)
    for (t, eps), conf in zip(settings, joint):
        single = POSTPROCESSORS.build({"name": "odin", "temperature": t, "noise": eps})
        single.attach_network(net, CPU, None)
        np.testing.assert_allclose(conf, single.score_loader(loader()), rtol=1e-12)


@pytest.mark.parametrize("backend", ["torch", "numba"])
@pytest.mark.parametrize("shape", [(5, 7, 6, 5), (4, 9)])
def test_gram_row_sum_backends_equal_the_full_gram_matrix(backend, shape):
    from openood_ext.postprocessors.gram import gram_features
    from openood_ext.postprocessors.gram_rowsums import CPU_CHUNK_BYTES, gram_row_sums

    if backend == "numba":
        pytest.importorskip("numba")
    gen = torch.Generator().manual_seed(1)
    t = torch.randn(*shape, generator=gen) * 1.5  # signed, like conv outputs
    powers = [3, 1, 5, 2]  # unsorted, with a gap
    got = gram_features(t, powers, backend)
    for g, p in zip(got, powers):
        torch.testing.assert_close(g.double(), _openood_gram(t, p), rtol=1e-4, atol=1e-5)
    # the raw sums, also when the CPU torch path needs several chunks, against float64
    big = torch.randn(3, 64, 32, 32, generator=gen)
    assert big[0].numel() * 4 * 2 > CPU_CHUNK_BYTES
    # from the first power 1, or a higher one; orders above 5 take the general CPU kernel
    for powers in ([1, 4], [3], [5, 2], [6, 1], [7, 3]):
        for s, p in zip(gram_row_sums(big, powers, backend), powers):
            fp = big.double().pow(p).flatten(2)
            torch.testing.assert_close(s.double(), (fp @ fp.sum(dim=1).unsqueeze(2)).squeeze(2), rtol=1e-4, atol=1e-2)


def test_gram_row_sums_rejects_an_unknown_backend():
    from openood_ext.postprocessors.gram_rowsums import gram_row_sums

    with pytest.raises(ValueError, match="backend must be one of"):
        gram_row_sums(torch.ones(2, 3), [1], "cuda-fast")


def test_layer_taps_run_stops_at_the_deepest_tapped_layer(resnet):
    from openood_ext.postprocessors.layer_features import LayerTaps

    net, _, data = resnet
    later = []
    handle = net.layer3.register_forward_hook(lambda *a: later.append(1))
    x = data["test"][0][:4].clone().requires_grad_(True)
    with LayerTaps(net, ["layer1:input", "layer2"], transform=lambda t: t.mean((2, 3)), clone=True) as taps:
        early = taps.run(x)
        assert later == []  # layer3 onwards never ran
        net(x)
        full = taps.pop()
    handle.remove()
    assert len(later) == 1 and len(early) == len(full) == 2
    for a, b in zip(early, full):
        torch.testing.assert_close(a, b)
    (g_early,) = torch.autograd.grad(early[1].sum(), x)
    (g_full,) = torch.autograd.grad(full[1].sum(), x)
    torch.testing.assert_close(g_early, g_full)


def test_gradient_methods_score_the_same_in_micro_batches(resnet):
    net, loaders, _ = resnet
    for name, extra in (("odin", {}), ("mds_ensemble", {"layers": ["stem", "layer2"]})):
        scores = []
        for size in (3, 64):
            pp = POSTPROCESSORS.build({"name": name, "grad_batch_size": size, **extra})
            pp.attach_network(net, CPU, loaders)
            pp.fit(extract_outputs(net, loaders("id_train")))
            scores.append(pp.score_loader(loaders("test")))
        np.testing.assert_allclose(scores[0], scores[1], rtol=1e-5, atol=1e-7)
    with pytest.raises(ConfigError, match="argument 'grad_batch_size': expected int >= 1, got 0"):
        POSTPROCESSORS.build({"name": "odin", "grad_batch_size": 0})
