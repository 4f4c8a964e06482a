"""VMDLS: losses, margin schedule, sampler, Gaussian score, multi-batch fitting, F1 at 95 % TPR."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from openood_ext.errors import ConfigError
from openood_ext.evaluators.f1 import open_set_f1, threshold_at_tpr
from openood_ext.networks import NETWORKS
from openood_ext.postprocessors import POSTPROCESSORS
from openood_ext.postprocessors.vmdls import (GaussianStats, gaussian_loglik, jitter_search,
                                              vmdls_scores)
from openood_ext.trainers import TRAINERS
from openood_ext.trainers.vmdls_losses import (class_kl, margin_schedule, pairwise_distances,
                                               triplet_distancing_loss)
from openood_ext.trainers.vmdls_sampler import ClassBalancedBatchSampler


# ---------------------------------------------------------------- KL
def test_kl_monte_carlo_matches_hand_formula_and_closed_form():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g) * 0.3
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    prior = torch.randn(3, 3, generator=g)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(6, 3, generator=g)
    # one-sample estimate = log q(z) - log p(z) averaged per class, then over classes
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(prior[labels], 0.1)
    per = q.log_prob(z) - p.log_prob(z)
    expected = torch.stack([per[labels == c].mean() for c in (0, 1, 2)]).mean()
    assert torch.allclose(class_kl(z, mu, logvar, labels, prior, 0.1), expected, atol=1e-5)
    # analytic: torch's closed form KL(N(mu, s^2) || N(m, 0.1^2))
    kl = torch.distributions.kl_divergence(q, p)
    expected = torch.stack([kl[labels == c].mean() for c in (0, 1, 2)]).mean()
    assert torch.allclose(class_kl(z, mu, logvar, labels, prior, 0.1, analytic=True), expected, atol=1e-5)


def test_kl_monte_carlo_is_unbiased():
    g = torch.Generator().manual_seed(1)
    mu, logvar = torch.full((20000, 2), 0.3), torch.full((20000, 2), math.log(0.04))
    labels = torch.zeros(20000, dtype=torch.long)
    prior = torch.zeros(1, 2)
    z = mu + 0.2 * torch.randn(20000, 2, generator=g)
    mc = class_kl(z, mu, logvar, labels, prior, 0.1)
    exact = math.log(0.1 / 0.2) + (0.04 + 0.09) / (2 * 0.01) - 0.5
    assert abs(float(mc) - exact) < 0.1


# ---------------------------------------------------------------- margin schedule
def test_margin_schedule_grows_from_margins_epoch_until_max():
    m = [margin_schedule(e, 0.15, 1.0, 1, 3.0) for e in range(7)]
    assert m == pytest.approx([0.15, 1.15, 2.15, 3.15, 3.15, 3.15, 3.15])
    assert margin_schedule(0, 0.15, 1.0, 0, 32) == pytest.approx(1.15)
    assert margin_schedule(100, 0.15, 1.0, 0, 32) == pytest.approx(32.15)
    assert margin_schedule(9, 0.15, 1.0, 10, 32) == pytest.approx(0.15)


# ---------------------------------------------------------------- triplet + distancing
def test_triplet_and_distancing_on_hand_made_batch():
    # 1-D points (euclidean): class 0 at 0 and 1, class 1 at 3.
    z = torch.tensor([[0.0], [1.0], [3.0]], requires_grad=True)
    y = torch.tensor([0, 0, 1])
    # triplets (a, p, n): (0,1,2): d_ap 1, d_an 3; (1,0,2): d_ap 1, d_an 2
    out = triplet_distancing_loss(z, y, margin=0.1, neg_margin=2.5, distance="euclidean")
    t1 = max(1 - 3 + 0.1, 0) + max(2.5 - 3, 0)   # 0
    t2 = max(1 - 2 + 0.1, 0) + max(2.5 - 2, 0)   # 0.5
    assert float(out["loss"].detach()) == pytest.approx((t1 + t2) / 1)  # only one non-zero triplet
    assert float(out["distancing"]) == pytest.approx(0.5)
    assert float(out["active"]) == pytest.approx(0.5)
    out = triplet_distancing_loss(z, y, margin=2.5, neg_margin=0.0, distance="euclidean")
    assert float(out["loss"].detach()) == pytest.approx(((1 - 3 + 2.5) + (1 - 2 + 2.5)) / 2)
    out["loss"].backward()
    assert torch.isfinite(z.grad).all()


def test_normalized_distance_caps_at_two_so_large_margins_act_alike():
    z = torch.tensor([[1.0, 0.0], [2.0, 0.0], [-5.0, 0.0], [0.0, 3.0]])
    d = pairwise_distances(z, "normalized")
    assert float(d[0, 2]) == pytest.approx(2.0) and float(d[0, 1]) == pytest.approx(0.0, abs=1e-5)
    y = torch.tensor([0, 0, 1, 1])
    a = triplet_distancing_loss(z, y, 0.1, 32.0)["loss"] - 32.0
    b = triplet_distancing_loss(z, y, 0.1, 64.0)["loss"] - 64.0
    assert float(a) == pytest.approx(float(b), abs=1e-4)


def test_no_active_triplet_gives_zero_with_gradient():
    z = torch.tensor([[0.0], [0.0], [10.0], [10.0]], requires_grad=True)
    out = triplet_distancing_loss(z, torch.tensor([0, 0, 1, 1]), 0.1, 0.5, "euclidean")
    assert float(out["loss"].detach()) == 0.0 and out["loss"].requires_grad


# ---------------------------------------------------------------- sampler
def test_sampler_composition_and_determinism():
    labels = np.repeat(np.arange(5), [10, 12, 9, 20, 15])
    s = ClassBalancedBatchSampler(labels, batch_classes=3, sample_count=4, seed=7)
    assert len(s) == (len(labels) - 1) // 12
    s.set_epoch(2)
    batches = list(s)
    assert len(batches) == len(s)
    for b in batches:
        classes, counts = np.unique(labels[b], return_counts=True)
        assert len(classes) == 3 and (counts == 4).all() and len(set(b)) == 12
    assert batches == s.batches(2) and batches != s.batches(3)
    other = ClassBalancedBatchSampler(labels, 3, 4, seed=7)
    other.load_state_dict(s.state_dict())
    assert list(other) == batches


@pytest.mark.parametrize("n, expected", [(60, 4), (61, 5), (71, 5), (72, 5), (12, 1)])
def test_sampler_batches_per_epoch_as_published(n, expected):
    # the published BalancedBatchSampler yields while count + batch_size < N (batch size 3 x 4 = 12):
    # 60 images -> 4 batches (not 5: 12 divides 60), 61 -> 5; at least one batch here
    labels = np.arange(n) % 3
    published = 0
    count = 0
    while count + 12 < n:
        published, count = published + 1, count + 12
    assert len(ClassBalancedBatchSampler(labels, 3, 4)) == max(1, published) == expected


def test_sampler_bad_input():
    labels = np.repeat(np.arange(3), [5, 6, 7])
    with pytest.raises(ConfigError, match="batch_classes"):
        ClassBalancedBatchSampler(labels, 4, 2)
    with pytest.raises(ConfigError, match="class 0 has only 5"):
        ClassBalancedBatchSampler(labels, 2, 6)


def test_trainer_rejects_bad_arguments():
    with pytest.raises(ConfigError, match="'distance': expected one of 'normalized', 'euclidean'"):
        TRAINERS.build({"name": "vmdls", "distance": "cosine"})
    with pytest.raises(ConfigError, match="'prior_std': expected float > 0"):
        TRAINERS.build({"name": "vmdls", "prior_std": 0})


# ---------------------------------------------------------------- Gaussian score
def _random_cov(g, d):
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_gaussian_loglik_matches_scipy():
    g = torch.Generator().manual_seed(3)
    means = torch.randn(2, 4, generator=g, dtype=torch.float64)
    covs = torch.stack([_random_cov(g, 4), _random_cov(g, 4)])
    x = torch.randn(5, 4, generator=g, dtype=torch.float64)
    lp = gaussian_loglik(x, means, torch.linalg.cholesky(covs))
    for k in range(2):
        ref = multivariate_normal(means[k].numpy(), covs[k].numpy()).logpdf(x.numpy())
        np.testing.assert_allclose(lp[:, k].numpy(), ref, rtol=1e-10)


def test_score_sign_and_shift():
    lp = np.array([-3.0, -10.0, -1.0])
    s = vmdls_scores(lp)
    np.testing.assert_allclose(s, lp - 0.0)        # M = max + 1 = 0
    assert (s <= -1).all()
    r = np.array([1.0, 4.0, 2.0])
    s = vmdls_scores(lp, r)
    np.testing.assert_allclose(s, (lp - 0.0) * r / 4.0)
    # M depends on the scored set: with d, adding a sample can change the ranking
    a = vmdls_scores(np.array([-1.0, -2.0]), np.array([1.0, 0.4]), shift=-0.5)
    b = vmdls_scores(np.array([-1.0, -2.0]), np.array([1.0, 0.4]), shift=10.0)
    assert a.argmax() != b.argmax()


def test_jitter_search_finds_smallest_step_and_fails_naming_class():
    cov = torch.zeros(2, 3, 3, dtype=torch.float64)
    cov[0] = torch.diag(torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64))
    cov[1] = torch.diag(torch.tensor([1.0, -2.5e-6, 1.0], dtype=torch.float64))
    jitter, k = jitter_search(cov, step=1e-6, offset=2)
    assert k == 3 and jitter == pytest.approx(5e-6)       # 3e-6 is the first step making -2.5e-6 positive
    jitter, k = jitter_search(torch.eye(3, dtype=torch.float64)[None], step=1e-6, offset=2)
    assert k == 0 and jitter == pytest.approx(2e-6)
    cov[1, 1, 1] = -1.0
    with pytest.raises(ConfigError, match="class 7"):
        jitter_search(cov, step=1e-6, max_jitter=1e-3, classes=[3, 7])


def test_fitting_accumulates_classes_spread_over_batches():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = torch.arange(40) % 2
    stats = GaussianStats(2, 3)
    for sl in (slice(0, 7), slice(7, 19), slice(19, 40)):
        stats.add(x[sl], y[sl])
    classes, means, cov = stats.moments()
    for c in (0, 1):
        xc = x[y == c].numpy()
        np.testing.assert_allclose(means[c].numpy(), xc.mean(0), rtol=1e-12)
        np.testing.assert_allclose(cov[c].numpy(), np.cov(xc.T, bias=True), atol=1e-12)


def _tiny_setup():
    torch.manual_seed(0)
    net = NETWORKS.build({"name": "vmdls", "encoder": "mnist_conv", "num_classes": 2, "in_channels": 1,
                          "image_size": 8, "latent_dim": 4})
    images = torch.randn(24, 1, 8, 8)
    labels = torch.arange(24) % 2
    data = [(images[i:i + 5], labels[i:i + 5], 0) for i in range(0, 24, 5)]
    return net, data


def test_postprocessor_end_to_end_matches_scipy_on_the_ensemble():
    net, data = _tiny_setup()
    pp = POSTPROCESSORS.build({"name": "vmdls"})
    pp.attach_network(net, torch.device("cpu"), lambda split: data)
    pp.fit()
    with torch.no_grad():
        feats = torch.cat([net.ensemble(b[0]) for b in data]).double()
    assert feats.shape[1] == net.ensemble_dim == 100 * 3 + 500 + 4
    y = torch.cat([b[1] for b in data])
    scores = pp.score_loader(data)
    ref = []
    for c in (0, 1):
        xc = feats[y == c].numpy()
        cov = np.cov(xc.T, bias=True) + pp.jitter * np.eye(xc.shape[1])
        ref.append(multivariate_normal(xc.mean(0), cov, allow_singular=False).logpdf(feats.numpy()))
    ref = np.max(ref, axis=0)
    np.testing.assert_allclose(scores, ref, rtol=1e-6)
    joint = pp.score_sets({"a": data[:2], "b": data[2:]})
    np.testing.assert_allclose(np.concatenate([joint["a"], joint["b"]]), ref - (ref.max() + 1), rtol=1e-6)


def test_postprocessor_with_autoencoder_weight_on_the_training_scale():
    net, data = _tiny_setup()
    ae = torch.nn.Conv2d(1, 1, 1)
    pp = POSTPROCESSORS.build({"name": "vmdls", "ae": ae, "shift": "fit"})
    pp.attach_network(net, torch.device("cpu"), lambda split: data)
    pp.fit()
    s = pp.score_loader(data)
    lp, _, r = pp.loglik_loader(data)
    expected = (lp.max(1).values.numpy() - pp.m_fit) * r.numpy() / pp.r_fit_max
    np.testing.assert_allclose(s, expected)
    assert (s <= 0).all()


def test_published_shift_rescored_per_id_ood_pair_by_the_evaluator():
    # shift: scored (default, published): M and max r over the ID test set together with ONE OOD set
    from openood_ext.evaluators import EVALUATORS
    from openood_ext.evaluators.metrics import ood_metrics
    from openood_ext.postprocessors.schedule import split_result
    from openood_ext.evaluators.ood import SplitScores
    net, data = _tiny_setup()
    pp = POSTPROCESSORS.build({"name": "vmdls", "ae": torch.nn.Conv2d(1, 1, 1)})
    assert pp.shift == "scored"
    pp.attach_network(net, torch.device("cpu"), lambda split: data)
    pp.fit()
    sets = {"id": data[:2], "a": data[2:4], "b": data[4:]}
    scored = {}
    for name, loader in sets.items():
        conf, preds, parts = split_result(pp.scored_split(loader))
        assert set(parts) == {"best", "recon"}
        scored[name] = SplitScores(conf, preds, np.zeros(len(conf), int), parts, pp.rescore_pair)
    result = EVALUATORS.get("ood")().evaluate("vmdls", scored["id"], {"a": ("near", scored["a"]),
                                                                     "b": ("far", scored["b"])})
    for name in ("a", "b"):  # by hand: the published formula over the pair, then the AUROC
        joint = pp.score_sets({"id": sets["id"], name: sets[name]})
        want = ood_metrics(joint["id"], joint[name])["auroc"]
        assert result.summary["sets"][name]["auroc"] == pytest.approx(want)
    lp, _, r = pp.loglik_loader(sets["a"])
    best = lp.max(1).values.numpy()
    np.testing.assert_allclose(scored["a"].conf, (best - best.max() - 1) * r.numpy() / r.numpy().max())


def test_network_forward_contract():
    net, data = _tiny_setup()
    logits, feat = net(data[0][0], return_feature=True)
    assert logits.shape == (5, 2) and feat.shape == (5, 4)
    res = NETWORKS.build({"name": "vmdls", "encoder": "resnet18_32x32", "num_classes": 3, "in_channels": 3,
                          "width": 8, "latent_dim": 6})
    assert res.ensemble(torch.randn(2, 3, 32, 32)).shape == (2, 8 + 16 + 32 + 64 + 6)
    with pytest.raises(ConfigError, match="encoder"):
        NETWORKS.build({"name": "vmdls", "encoder": "vgg13"})


# ---------------------------------------------------------------- F1 at 95 % TPR
def test_threshold_and_open_set_f1_by_hand():
    conf_id = np.arange(20, dtype=float)           # t keeps 19 of 20 (95 %)
    assert threshold_at_tpr(conf_id, 0.95) == 1.0
    labels = np.array([0] * 10 + [1] * 10)
    pred = labels.copy()
    res = open_set_f1(conf_id, pred, labels, conf_ood=np.array([-5.0, 0.5, 30.0]), pred_ood=np.array([0, 0, 1]))
    # sample 0 (class 0) -> unknown; ood: two unknown, one predicted 1
    y_true = np.r_[labels, [2, 2, 2]]
    y_pred = np.r_[[2], labels[1:], [2, 2, 1]]
    from sklearn.metrics import f1_score
    assert res["f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert res["tpr"] == pytest.approx(0.95)


# ---------------------------------------------------------------- engine integration
def test_trainer_runs_in_the_engine_and_resumes_class_means(tmp_path):
    from openood_ext.trainers import Engine, split_trainer_config

    torch.manual_seed(0)
    images, labels = torch.randn(36, 1, 8, 8), torch.arange(36) % 3
    spec = {"name": "vmdls", "epochs": 2, "optimizer": {"name": "adam", "lr": 1e-3},
            "scheduler": "constant", "batch_classes": 3, "sample_count": 4}

    def run(epochs, resume):
        settings, method = split_trainer_config({**spec, "epochs": epochs})
        method.pop("name")
        trainer = TRAINERS.get("vmdls")(**method)
        net = NETWORKS.build({"name": "vmdls", "num_classes": 3, "image_size": 8, "latent_dim": 4})
        sampler = trainer.batch_sampler(labels, 12, 0)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_sampler=sampler)
        engine = Engine(trainer, net, loader, settings, num_classes=3, state_path=tmp_path / "last.pt")
        hist = engine.fit(resume=resume)
        return net, trainer, hist

    net, trainer, hist = run(2, False)
    assert len(hist) == 2 and hist[1]["neg_margin"] == pytest.approx(2.15) and "kl" in hist[0]
    assert torch.allclose(net.class_means, trainer.stats.means) and net.class_means.abs().sum() > 0
    blob = torch.load(tmp_path / "last.pt", weights_only=False)
    assert "vmdls_class_means" in blob["states"]
    net2, trainer2, _ = run(2, True)            # nothing left to train: state restored as saved
    assert torch.equal(trainer2.stats.means, trainer.stats.means)


def test_autoencoders_reconstruct_input_shape_and_train_step():
    from openood_ext.trainers import Batch
    for spec, x in (({"name": "ae_mnist_conv", "image_size": 28}, torch.randn(2, 1, 28, 28)),
                    ({"name": "ae_mnist_conv", "image_size": 8}, torch.randn(2, 1, 8, 8)),
                    ({"name": "ae_resnet18_32x32", "width": 8}, torch.randn(2, 3, 32, 32))):
        ae = NETWORKS.build(spec)
        assert ae.reconstruct(x).shape == x.shape
        logits, code = ae(x, return_feature=True)
        assert logits.shape == (2, 1) and (logits <= 0).all()
    trainer = TRAINERS.get("autoencoder")()
    trainer.setup(ae, None)
    out = trainer.training_step(Batch(x, torch.zeros(2, dtype=torch.long), None, 0, 0, 0))
    assert torch.allclose(out["loss"], ((ae.reconstruct(x) - x) ** 2).mean())


def test_nan_latent_variance_stops_training_with_one_line_error():
    from openood_ext.trainers import Batch, TrainContext, TrainingError
    net = NETWORKS.build({"name": "vmdls", "num_classes": 2, "image_size": 8, "latent_dim": 4})
    with torch.no_grad():
        net.fc_var.bias.fill_(float("nan"))
    trainer = TRAINERS.get("vmdls")(batch_classes=2, sample_count=2)
    trainer.setup(net, TrainContext(device=torch.device("cpu"), num_classes=2, epochs=1, steps_per_epoch=1))
    with pytest.raises(TrainingError, match="log-variance is not finite at epoch 1, batch 1"):
        trainer.training_step(Batch(torch.randn(4, 1, 8, 8), torch.tensor([0, 0, 1, 1]), None, 0, 0, 0))


def test_fit_rejects_non_finite_features():
    net, data = _tiny_setup()
    with torch.no_grad():
        net.fc_mu.bias.fill_(float("inf"))
    pp = POSTPROCESSORS.build({"name": "vmdls"})
    pp.attach_network(net, torch.device("cpu"), lambda split: data)
    with pytest.raises(ConfigError, match="non-finite ensemble features"):
        pp.fit()
