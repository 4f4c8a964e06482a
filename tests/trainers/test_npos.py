"""NPOS: the sampler (ranking, faiss/torch, seeds), class queues and resume, losses on hand-computed
cases, gradient flow, one trainer step, configs and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.neighbors import NearestNeighbors

from openood_ext.errors import ConfigError, DataError
from openood_ext.networks import NETWORKS
from openood_ext.synthesizers import SYNTHESIZERS, SourceContext
from openood_ext.synthesizers.npos import ClassQueues, NPOSParams, NPOSSynthesizer, faiss_available, npos_sample
from openood_ext.trainers import TRAINERS, Batch, Engine, EngineSettings, TrainContext
from openood_ext.trainers.npos import (compactness_loss, dispersion_loss, ema_prototypes, open_set_loss)

SMALL = NPOSParams(K=5, select=6, pick=3, candidates=40, keep=5, sigma=0.3)


def _queues(C=3, Q=30, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(C, Q, D, generator=g) + 0.5


def _kth_sq_sklearn(queries: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """Independent reference: squared Euclidean distance to the k-th nearest bank row (unit vectors)."""
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    nn_ = NearestNeighbors(n_neighbors=k).fit(unit(bank.astype(np.float64)))
    dist, _ = nn_.kneighbors(unit(queries.astype(np.float64)))
    return dist[:, -1] ** 2


# ------------------------------------------------------------------------------------------ sampler
def test_kept_candidates_are_the_top_keep_of_their_own_boundary_point():
    q = _queues()
    noise = torch.randn(SMALL.candidates, q.shape[2], generator=torch.Generator().manual_seed(3))
    s = npos_sample(q, SMALL, generator=torch.Generator().manual_seed(1), noise=noise, backend="torch")
    C, P = q.shape[0], SMALL.pick
    assert s.outliers.shape == (C, P, SMALL.keep, q.shape[2])
    for c in range(C):
        # boundary points: among the `select` largest self-inclusive K-th-NN distances
        self_kth = _kth_sq_sklearn(q[c].numpy(), q[c].numpy(), SMALL.K)
        top_select = set(np.argsort(-self_kth)[:SMALL.select].tolist())
        assert set(s.boundary_index[c].tolist()) <= top_select
        for i in range(P):
            b = q[c, s.boundary_index[c, i]]
            cand = (b + SMALL.sigma * noise).numpy()
            score = _kth_sq_sklearn(cand, q[c].numpy(), SMALL.K)
            true_top = set(np.argsort(-score)[:SMALL.keep].tolist())
            kept = s.outliers[c, i].numpy()
            rows = [int(np.argmin(np.abs(cand - k).sum(1))) for k in kept]
            assert np.allclose(cand[rows], kept, atol=1e-6)  # returned raw, not normalised
            assert set(rows) == true_top
            np.testing.assert_allclose(np.sort(score[rows]), np.sort(s.scores[c, i].numpy()), rtol=1e-4, atol=1e-5)


def test_published_ranking_mixes_up_candidates_when_pick_exceeds_one():
    q = _queues()
    noise = torch.randn(SMALL.candidates, q.shape[2], generator=torch.Generator().manual_seed(3))
    kw = dict(noise=noise, backend="torch")
    good = npos_sample(q, SMALL, generator=torch.Generator().manual_seed(1), ranking="intended", **kw)
    bad = npos_sample(q, SMALL, generator=torch.Generator().manual_seed(1), ranking="published", **kw)
    assert torch.equal(good.boundary_index, bad.boundary_index)
    assert not torch.equal(good.outliers, bad.outliers)
    # with pick = 1 the published reshape is harmless
    one = NPOSParams(K=5, select=6, pick=1, candidates=40, keep=5, sigma=0.3)
    a = npos_sample(q, one, generator=torch.Generator().manual_seed(1), ranking="intended", **kw)
    b = npos_sample(q, one, generator=torch.Generator().manual_seed(1), ranking="published", **kw)
    assert torch.equal(a.outliers, b.outliers)


def test_outliers_lie_farther_from_the_queue_than_their_boundary_points():
    q = _queues(C=2, Q=60, D=16)
    p = NPOSParams(K=10, select=10, pick=2, candidates=100, keep=10, sigma=0.5)
    s = npos_sample(q, p, generator=torch.Generator().manual_seed(0), backend="torch")
    for c in range(2):
        for i in range(p.pick):
            out = _kth_sq_sklearn(s.outliers[c, i].numpy(), q[c].numpy(), p.K)
            b = _kth_sq_sklearn(s.boundary[c, i:i + 1].numpy(), q[c].numpy(), p.K)[0]
            assert out.min() > b, (c, i, out.min(), b)


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
def test_faiss_and_torch_paths_agree():
    q = _queues(C=4, Q=50, D=12, seed=5)
    p = NPOSParams(K=7, select=10, pick=2, candidates=60, keep=8, sigma=0.2)
    a = npos_sample(q, p, generator=torch.Generator().manual_seed(2), backend="torch")
    b = npos_sample(q, p, generator=torch.Generator().manual_seed(2), backend="faiss")
    assert torch.equal(a.boundary_index, b.boundary_index)
    assert torch.allclose(a.outliers, b.outliers)
    assert torch.allclose(a.scores, b.scores, atol=1e-5)


def test_torch_chunking_over_classes_gives_the_same_outliers():
    q = _queues(C=5)
    a = npos_sample(q, SMALL, generator=torch.Generator().manual_seed(2), backend="torch")
    b = npos_sample(q, SMALL, generator=torch.Generator().manual_seed(2), backend="torch", chunk_elems=1)
    assert torch.equal(a.outliers, b.outliers)


def test_same_seed_same_outliers_other_seed_other_outliers():
    q = _queues()
    run = lambda seed: npos_sample(q, SMALL, generator=torch.Generator().manual_seed(seed)).outliers  # noqa: E731
    assert torch.equal(run(4), run(4))
    assert not torch.equal(run(4), run(5))


def test_single_class_2d_input_and_flat_output():
    s = npos_sample(_queues(C=1)[0], SMALL, generator=torch.Generator().manual_seed(0))
    out, labels = s.flat()
    assert out.shape == (SMALL.pick * SMALL.keep, 8) and labels.tolist() == [0] * len(out)


# ------------------------------------------------------------------------------------------ queues
def test_queue_fifo_and_state_roundtrip():
    qs = ClassQueues(num_classes=2, size=3)
    f = torch.arange(10, dtype=torch.float32)[:, None].repeat(1, 2) + 1
    qs.push(f[:2], torch.tensor([0, 1]))
    assert qs.count.tolist() == [1, 1] and not qs.full
    qs.push(f[2:8], torch.tensor([0, 0, 0, 1, 0, 1]))
    # class 0 got rows 1,3,4,5,7 (values 1,3,4,5,7) -> keeps the last three, oldest first
    assert qs.data[0, :, 0].tolist() == [4.0, 5.0, 7.0]
    assert qs.data[1, :, 0].tolist() == [2.0, 6.0, 8.0] and qs.full
    clone = ClassQueues(2, 3)
    clone.load_state_dict(qs.state_dict())
    assert torch.equal(clone.data, qs.data) and torch.equal(clone.count, qs.count)
    qs.push(f[8:9], torch.tensor([1]))
    assert qs.data[1, :, 0].tolist() == [6.0, 8.0, 9.0]


def test_queue_rejects_nan_and_bad_labels():
    qs = ClassQueues(2, 4)
    with pytest.raises(DataError, match="NaN"):
        qs.push(torch.tensor([[float("nan"), 1.0]]), torch.tensor([0]))
    with pytest.raises(DataError, match="label"):
        qs.push(torch.ones(1, 2), torch.tensor([2]))


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("args,match", [
    ({"keep": 700}, "keep"), ({"select": 1200}, "select"), ({"K": 1000}, "K"), ({"pick": 300}, "pick"),
    ({"sigma": 0}, "sigma"), ({"ranking": "buggy"}, "ranking"), ({"queue_size": 1}, "queue_size")])
def test_bad_synthesizer_arguments_are_one_line_config_errors(args, match):
    with pytest.raises(ConfigError, match=match) as info:
        SYNTHESIZERS.build({"name": "npos", **args})
    assert "\n" not in str(info.value)


def test_nan_queue_and_premature_synthesis_are_errors():
    q = _queues()
    q[1, 3, 2] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        npos_sample(q, SMALL)
    src = SYNTHESIZERS.build({"name": "npos", "queue_size": 30, "K": 5, "select": 6, "pick": 2,
                              "candidates": 20, "keep": 4, "start_epoch": 0, "num_classes": 2})
    src.setup(SourceContext(None, torch.device("cpu"), 0, 8, 1))
    src.update(torch.randn(5, 4), torch.tensor([0, 0, 1, 1, 1]))
    assert not src.ready(0)  # warns once, no silent empty batch
    with pytest.raises(DataError, match="full"):
        src.synthesize()


class _Bench:
    num_classes = 2

    def __init__(self, labels):
        self._labels = labels

    def split(self, name):
        return name

    def dataset(self, split, train=False):
        return type("D", (), {"labels": lambda _self: self._labels})()


def test_small_classes_warn_and_empty_classes_stop():
    src = SYNTHESIZERS.build({"name": "npos", "queue_size": 10, "K": 3, "select": 4, "pick": 2,
                              "candidates": 8, "keep": 2})
    src.setup(SourceContext(_Bench([0] * 20 + [1] * 5), torch.device("cpu"), 0, 8, 1))
    with pytest.warns(UserWarning, match="fewer training images than queue_size"):
        src.check()
    src = SYNTHESIZERS.build({"name": "npos", "queue_size": 10, "K": 3, "select": 4, "pick": 2,
                              "candidates": 8, "keep": 2})
    src.setup(SourceContext(_Bench([0] * 20), torch.device("cpu"), 0, 8, 1))
    with pytest.raises(DataError, match="no training image"):
        src.check()


# ------------------------------------------------------------------------------------------ losses
def test_prototype_ema_matches_the_sequential_loop():
    g = torch.Generator().manual_seed(0)
    mu0 = F.normalize(torch.randn(3, 4, generator=g), dim=1)
    z = F.normalize(torch.randn(7, 4, generator=g), dim=1)
    y = torch.tensor([0, 2, 0, 0, 1, 2, 0])
    ref = mu0.clone()
    for zi, yi in zip(z, y):  # the published per-sample loop
        ref[yi] = F.normalize(0.95 * ref[yi] + 0.05 * zi, dim=0)
    assert torch.allclose(ema_prototypes(mu0, z, y, 0.95), ref, atol=1e-6)
    # hand-computed single update: mu = (1, 0), z = (0, 1), m = 0.5 -> normalize(0.5, 0.5)
    out = ema_prototypes(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([0]), 0.5)
    assert torch.allclose(out, torch.tensor([[1.0, 1.0]]) / math.sqrt(2))


def test_compactness_scale_and_value_by_hand():
    mu = torch.eye(2, dtype=torch.float64)
    z = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    # logits (1/0.1, 0) -> -log softmax[0] = log(1 + e^-10); scaled by 0.1/0.07
    expected = (0.1 / 0.07) * math.log(1 + math.exp(-10))
    assert compactness_loss(z, mu, torch.tensor([0])).item() == pytest.approx(expected, rel=1e-5)
    assert compactness_loss(z, mu, torch.tensor([1])).item() == pytest.approx((0.1 / 0.07) * (10 + math.log(1 + math.exp(-10))), rel=1e-5)


def test_dispersion_by_hand():
    mu = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    # sims: c0: (0, -1), c1: (0, 0), c2: (-1, 0); /0.1 -> log mean exp
    rows = [math.log((math.exp(0) + math.exp(-10)) / 2), math.log(1.0), math.log((math.exp(-10) + 1) / 2)]
    assert dispersion_loss(mu).item() == pytest.approx(sum(rows) / 3, rel=1e-5)


def test_open_set_loss_gradients_reach_id_features_not_outliers():
    feat = torch.randn(4, 6, requires_grad=True)
    outliers = torch.randn(5, 6)  # synthesised: constants
    mlp = torch.nn.Linear(6, 1)
    loss = open_set_loss(mlp(feat).squeeze(1), mlp(outliers).squeeze(1))
    expected = F.binary_cross_entropy_with_logits(
        torch.cat([mlp(feat), mlp(outliers)]).squeeze(1), torch.tensor([1.0] * 4 + [0.0] * 5))
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert feat.grad is not None and feat.grad.abs().sum() > 0
    assert mlp.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------ network + trainer
def _toy(views=2, n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, views, 1, 8, 8, generator=g)
    y = torch.arange(n) % 3
    x += y[:, None, None, None, None].float() * 0.5  # separable classes
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def _parts(start_epoch=1, seed=0):
    torch.manual_seed(seed)
    net = NETWORKS.build({"name": "npos_net", "backbone": "digits_cnn", "num_classes": 3, "in_channels": 1,
                          "width": 4, "head_dim": 8, "mlp_hidden": 8})
    src = SYNTHESIZERS.build({"name": "npos", "queue_size": 12, "K": 4, "select": 4, "pick": 2,
                              "candidates": 10, "keep": 3, "start_epoch": start_epoch, "num_classes": 3,
                              "backend": "torch"})
    src.setup(SourceContext(None, torch.device("cpu"), seed, 8, 6))
    trainer = TRAINERS.build({"name": "npos", "prototype_init": "batch"})
    return net, src, trainer


def test_networks_shapes_and_heads():
    net = NETWORKS.build({"name": "npos_resnet18_32x32", "num_classes": 10, "width": 4})
    logits, feat = net(torch.randn(2, 3, 32, 32), return_feature=True)
    assert logits.shape == (2, 10) and feat.shape == (2, 32)
    z = net.project(feat)
    assert torch.allclose(z.norm(dim=1), torch.ones(2), atol=1e-5) and z.shape == (2, 128)
    assert net.open_logit(feat).shape == (2,)
    r34 = NETWORKS.build({"name": "npos_resnet34_32x32", "num_classes": 100, "width": 4})
    assert [len(s) for s in (r34.backbone.layer1, r34.backbone.layer2, r34.backbone.layer3, r34.backbone.layer4)] == [3, 4, 6, 3]


def test_trainer_step_outliers_constant_and_regulariser_gated_by_start_epoch():
    net, src, trainer = _parts(start_epoch=1)
    ctx = TrainContext(device=torch.device("cpu"), num_classes=3, epochs=2, steps_per_epoch=6, outliers=src)
    trainer.setup(net, ctx)
    x, y = next(iter(_toy(n=48)))
    for _ in range(3):  # fill the queues (8 images x 2 views per step, 12 per class needed)
        terms = trainer.training_step(Batch(x, y, None, 0, 0, 0))
        assert terms["reg"] == 0 and terms["n_outliers"] == 0
    assert src.queues.full
    out = src.synthesize()
    assert not out.requires_grad and out.shape == (3 * 2 * 3, net.feature_dim)
    net.zero_grad()
    terms = trainer.training_step(Batch(x, y, None, 1, 3, 0))
    assert terms["n_outliers"] == 18 and terms["reg"] > 0
    terms["loss"].backward()
    assert net.mlp[0].weight.grad.abs().sum() > 0
    assert net.backbone.body[0].weight.grad.abs().sum() > 0
    assert net.fc.weight.grad is None  # NPOS puts no loss on fc


def test_one_optimizer_step_lowers_the_loss():
    net, src, trainer = _parts(start_epoch=0)
    ctx = TrainContext(device=torch.device("cpu"), num_classes=3, epochs=1, steps_per_epoch=1, outliers=src)
    trainer.setup(net, ctx)
    x, y = next(iter(_toy(n=48)))
    for _ in range(3):
        trainer.training_step(Batch(x, y, None, 0, 0, 0))
    net.eval()  # fixed BN statistics so the two evaluations see the same function
    proto = trainer.prototypes.value.clone()
    src.generator.manual_seed(0)
    before = trainer.training_step(Batch(x, y, None, 0, 0, 0))
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    before["loss"].backward()
    opt.step()
    trainer.prototypes.value = proto
    src.generator.manual_seed(0)
    after = trainer.training_step(Batch(x, y, None, 0, 0, 0))
    assert after["loss"].item() < before["loss"].item()


def test_engine_resume_restores_queues_prototypes_and_is_bit_identical(tmp_path):
    settings = EngineSettings.from_config({"epochs": 2, "batch_size": 8, "optimizer": {"name": "sgd", "lr": 0.05}})

    def engine(path):
        net, src, trainer = _parts(start_epoch=1)
        return Engine(trainer, net, _toy(), settings, num_classes=3, source=src, state_path=path)

    full = engine(tmp_path / "a.pt")
    full.fit()
    first = engine(tmp_path / "b.pt")
    first.settings = EngineSettings.from_config({"epochs": 2, "batch_size": 8, "optimizer": {"name": "sgd", "lr": 0.05}})
    first.settings.epochs = 1  # interrupted after epoch 1 (its schedule was built for 2)
    first.fit()
    saved = torch.load(tmp_path / "b.pt", weights_only=False)
    assert saved["source"]["queues"]["count"].tolist() == [12, 12, 12]
    assert saved["states"]["npos_prototypes"]["value"].shape == (3, 8)
    resumed = engine(tmp_path / "b.pt")
    resumed.fit(resume=True)
    assert resumed.history[-1]["n_outliers"] == 18
    for k, v in full.net.state_dict().items():
        assert torch.equal(v, resumed.net.state_dict()[k]), k
    assert torch.equal(full.source.queues.data, resumed.source.queues.data)
    assert torch.equal(full.trainer.prototypes.value, resumed.trainer.prototypes.value)


def test_trainer_rejects_plain_networks_and_bad_args():
    from openood_ext.trainers import validate_trainer_config
    with pytest.raises(ConfigError, match="proto_m"):
        validate_trainer_config({"name": "npos", "proto_m": 1.5})
    plan = validate_trainer_config({"name": "npos"})
    assert getattr(plan.source, "kind", None) == "features"
    net = NETWORKS.build({"name": "digits_cnn", "num_classes": 3})
    ctx = TrainContext(device=torch.device("cpu"), num_classes=3, epochs=1, steps_per_epoch=1, outliers=plan.source)
    with pytest.raises(ConfigError, match="npos_resnet18_32x32"):
        plan.trainer.setup(net, ctx)


def test_configs_load_with_the_papers_values():
    from openood_ext.config import load_config
    cfg = load_config(["configs/experiments/npos/train_npos_cifar10.yml"])
    t = cfg.trainer
    assert (t.outliers.queue_size, t.outliers.K, t.outliers.select, t.outliers.pick, t.outliers.candidates,
            t.outliers.keep, t.outliers.sigma, t.outliers.start_epoch) == (1000, 300, 200, 2, 600, 200, 0.1, 200)
    assert (t.epochs, t.batch_size, t.optimizer.lr, t.optimizer.weight_decay) == (500, 256, 0.5, 1e-4)
    v15 = load_config(["configs/experiments/npos/train_npos_cifar10.yml", "configs/trainers/npos_openood_v15.yml"])
    assert (v15.trainer.epochs, v15.trainer.optimizer.lr, v15.trainer.outliers.start_epoch) == (100, 0.1, 39)
    assert v15.trainer.outliers.K == 300


def test_openood_v15_synthesis_starts_at_its_40th_epoch():
    """OpenOOD counts epochs from 1 and synthesises while epoch_idx >= start_epoch_KNN (40)."""
    from openood_ext.config import load_config
    v15 = load_config(["configs/experiments/npos/train_npos_cifar10.yml", "configs/trainers/npos_openood_v15.yml"])
    first_openood = min(e for e in range(1, 101) if e >= 40)
    assert v15.trainer.outliers.start_epoch == first_openood - 1
    src = NPOSSynthesizer(queue_size=4, K=2, select=2, pick=1, candidates=3, keep=1, start_epoch=39)
    src.update(torch.randn(8, 3), torch.tensor([0, 1] * 4))
    assert [src.ready(e) for e in (38, 39)] == [False, True]


def _supcon_lr(lr, e, b, n, epochs=100, warm=10, w_from=0.001, epoch_passed=None):
    """SupCon's adjust_learning_rate + warmup_learning_rate by hand at 0-based epoch e, 1-based batch b;
    ``epoch_passed`` = the epoch the caller hands to the warm-up formula (OpenOOD: e, intended: e + 1)."""
    eta_min = lr * 0.1 ** 3
    cos = lambda x: eta_min + (lr - eta_min) * (1 + math.cos(math.pi * x / epochs)) / 2  # noqa: E731
    ep = e + 1 if epoch_passed is None else epoch_passed
    if ep <= warm:
        return w_from + (b + (ep - 1) * n) / (warm * n) * (cos(warm) - w_from)
    return cos(e)


@pytest.mark.parametrize("base", [0, 1])
def test_supcon_schedule_matches_the_formula_and_openood_starts_negative(base):
    from openood_ext.trainers.optim import check_schedule_spec, schedule_factor
    n, lr = 7, 0.1
    spec = check_schedule_spec({"name": "supcon", "min_lr_ratio": 1e-3, "warmup_epochs": 10, "warmup_from_ratio": 0.01,
                                "warmup_epoch_base": base}, 100)
    for t in range(0, 100 * n, 3):
        e, b = divmod(t, n)
        ref = _supcon_lr(lr, e, b + 1, n, epoch_passed=e + base)
        assert lr * schedule_factor(spec, t, 100, n) == pytest.approx(ref, rel=1e-9, abs=1e-12), (t, base)
    first = lr * schedule_factor(spec, 0, 100, n)
    cos10 = lr * 1e-3 + (lr - lr * 1e-3) * (1 + math.cos(math.pi * 10 / 100)) / 2
    p0 = (1 - n) / (10 * n) if base == 0 else 1 / (10 * n)   # OpenOOD's first step: p <= 0, a negative lr
    assert first == pytest.approx(0.001 + p0 * (cos10 - 0.001)) and (first < 0) == (base == 0)
    with pytest.raises(ConfigError, match="warmup_epoch_base"):
        check_schedule_spec({"name": "supcon", "warmup_epoch_base": 2}, 10)


def test_npos_postprocessor_is_knn_on_normalised_penultimate_features():
    from openood_ext.features import NetOutputs
    from openood_ext.postprocessors import POSTPROCESSORS
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(50, 6, generator=g), torch.randn(7, 6, generator=g)
    outs = lambda f: NetOutputs(logits=torch.zeros(len(f), 2), features=f, labels=torch.zeros(len(f), dtype=torch.long))  # noqa: E731
    a = POSTPROCESSORS.build({"name": "npos", "k": 5}).fit(outs(train)).score(outs(test))
    b = POSTPROCESSORS.build({"name": "knn", "k": 5}).fit(outs(train)).score(outs(test))
    np.testing.assert_allclose(a, b)
    ref = _kth_sq_sklearn(test.numpy(), train.numpy(), 5)
    np.testing.assert_allclose(a, -np.sqrt(ref), rtol=1e-4)


def test_bench_npos_runs_at_tiny_sizes(capsys):
    from openood_ext.bench.npos import bench, main
    r = bench(classes=2, queue=30, dim=8, K=5, select=6, pick=2, candidates=20, keep=4, repeats=1)
    assert set(r["seconds"]) >= {"torch", "loop"} and r["outliers_per_call"] == 16
    assert main(["--classes", "2", "--queue", "30", "--dim", "8", "--K", "5", "--select", "6",
                 "--candidates", "20", "--keep", "4", "--repeats", "1"]) == 0
    assert "ratios" in capsys.readouterr().out


def test_loop_reference_matches_the_vectorised_sampler():
    from openood_ext.bench.npos import loop_sample
    q = _queues(C=2, Q=30, D=8).abs()
    p = NPOSParams(K=5, select=6, pick=2, candidates=20, keep=4, sigma=0.1)
    # same draw order: noise first, then one randperm per class (loop) vs randperm per class then noise
    ref = loop_sample(q, p, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(p.candidates, 8, generator=g)
    s = npos_sample(q, p, generator=g, noise=noise, backend="torch")
    assert torch.allclose(torch.sort(ref, dim=0).values, torch.sort(s.flat()[0], dim=0).values, atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
def test_faiss_and_torch_keep_the_same_sets_at_the_papers_sizes():
    q = torch.randn(2, 1000, 512, generator=torch.Generator().manual_seed(0)).abs()
    a = npos_sample(q, NPOSParams(), generator=torch.Generator().manual_seed(1), backend="torch")
    b = npos_sample(q, NPOSParams(), generator=torch.Generator().manual_seed(1), backend="faiss")
    assert torch.equal(a.boundary_index, b.boundary_index)
    # same kept candidates per boundary point; their order within top-k may differ at float32 near-ties
    for c in range(2):
        for i in range(2):
            ra = {tuple(r) for r in a.outliers[c, i, :, :4].tolist()}
            rb = {tuple(r) for r in b.outliers[c, i, :, :4].tolist()}
            assert ra == rb
    assert torch.allclose(torch.sort(a.scores, -1).values, torch.sort(b.scores, -1).values, atol=1e-5)


def test_prototypes_are_restored_onto_the_training_device():
    """A resumed ``prototype_init: batch`` run has no prototypes before loading: they must land on the
    training device, not the CPU (the next step indexes them with the device's labels)."""
    from openood_ext.trainers.npos import PrototypeBank
    saved = PrototypeBank()
    saved.value = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    bank = PrototypeBank(device="meta")  # any device other than the CPU the state was saved from
    bank.load_state_dict(saved.state_dict())
    assert bank.value.device.type == "meta" and bank.value.shape == (3, 4)
    queues = ClassQueues(3, 5, dim=4, device="meta")
    queues.load_state_dict(ClassQueues(3, 5, dim=4).state_dict())
    assert queues.data.device.type == "meta"


def test_drop_last_sampler_drops_the_short_batch_and_reshuffles_per_epoch():
    from openood_ext.trainers.drop_last import DropLastBatchSampler
    s = DropLastBatchSampler(10, 4, seed=3)
    e0 = list(s)
    assert len(s) == 2 and [len(b) for b in e0] == [4, 4] and len({i for b in e0 for i in b}) == 8
    assert list(s) == e0  # the same epoch, the same order (resume)
    s.set_epoch(1)
    assert list(s) != e0
    with pytest.raises(ConfigError, match="no full batch"):
        DropLastBatchSampler(3, 4, seed=0)
    # the trainer hands it to the loader only when asked to (default: the engine's shuffled loader)
    assert TRAINERS.build({"name": "npos"}).batch_sampler(torch.zeros(10), 4, 0) is None
    assert len(TRAINERS.build({"name": "npos", "drop_last": True}).batch_sampler(torch.zeros(50_000), 256, 0)) == 195


def test_prototype_init_test_averages_the_val_and_test_splits():
    """The paper's DispLoss averages z over its test loader: ``prototype_init: test`` = id_val + id_test."""
    from types import SimpleNamespace
    net, _, _ = _parts()
    g = torch.Generator().manual_seed(4)
    splits = {name: (torch.randn(n, 1, 8, 8, generator=g), torch.arange(n) % 3) for name, n in
              (("id_val", 6), ("id_test", 9))}
    bench = SimpleNamespace(split=lambda name: name, loader=lambda split, **k: [splits[split]])
    want = {}
    net.eval()
    with torch.no_grad():
        for init, names in (("val", ["id_val"]), ("test", ["id_val", "id_test"])):
            z = torch.cat([net.project(net.features(splits[n][0])) for n in names])
            y = torch.cat([splits[n][1] for n in names])
            want[init] = F.normalize(torch.stack([z[y == c].sum(0) for c in range(3)]), dim=1)
    for init in ("val", "test"):
        trainer = TRAINERS.build({"name": "npos", "prototype_init": init})
        trainer.net, trainer.ctx = net, SimpleNamespace(benchmark=bench, num_classes=3, device=torch.device("cpu"))
        torch.testing.assert_close(trainer._val_prototypes(), want[init])
    assert not torch.allclose(want["val"], want["test"])


def test_paper_and_openood_recipes_keep_their_own_loader_and_normalisation():
    from openood_ext.config import load_config
    paper = load_config(["configs/experiments/npos/train_npos_cifar10.yml"])
    v15 = load_config(["configs/experiments/npos/train_npos_cifar10.yml", "configs/trainers/npos_openood_v15.yml"])
    assert paper.trainer.drop_last is True and list(paper.benchmark.preprocessor.std) == [0.2471, 0.2435, 0.2616]
    assert v15.trainer.drop_last is False and list(v15.benchmark.preprocessor.std) == [0.2470, 0.2435, 0.2616]
    c100 = load_config(["configs/experiments/npos/test_ood_npos_cifar100.yml"])
    assert (c100.network.name, c100.trainer.proto_m, c100.trainer.drop_last) == ("npos_resnet34_32x32", 0.5, True)
    assert c100.postprocessors[0].k == 300 and c100.benchmark.num_classes == 100
    assert load_config(["configs/experiments/npos/test_ood_npos_cifar10.yml", "configs/trainers/npos_openood_v15.yml"]).aps
