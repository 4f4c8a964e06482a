"""GrOOD against its definition: the gradient of the nearest-prototype cross-entropy with respect to the OOD
prototype (autograd and a hand case), then minus the k-th nearest-neighbour distance (scikit-learn) to the
gradients of the correctly classified ID training samples."""

import math

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors
from zoo_helpers import build, outputs

from openood_ext.errors import ConfigError, DataError
from openood_ext.postprocessors.grood import ood_prototype_gradient
from openood_ext.postprocessors.schedule import FixedSource, Scheduler


def test_gradient_hand_case():
    # h sits on p_1; distances to (p_1, p_2, p_o) are (0, 4, 3); h - p_o points along -y
    g = ood_prototype_gradient(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 0.0], [4.0, 0.0]]),
                               torch.tensor([0.0, 3.0]))
    p_o = math.exp(-3) / (1 + math.exp(-4) + math.exp(-3))
    np.testing.assert_allclose(g.numpy(), [[0.0, -p_o]], rtol=1e-12)


def test_gradient_is_autograds_for_every_predicted_class():
    rng = np.random.default_rng(0)
    h = torch.tensor(rng.normal(size=(6, 5)))
    protos, ood = torch.tensor(rng.normal(size=(3, 5))), torch.tensor(rng.normal(size=5))
    closed = ood_prototype_gradient(h, protos, ood)
    for yhat in range(3):
        for i in range(len(h)):
            p_o = ood.clone().requires_grad_(True)
            s = -torch.cat([protos, p_o[None]]).sub(h[i]).norm(dim=1)
            loss = torch.nn.functional.cross_entropy(s[None], torch.tensor([yhat]))
            (grad,) = torch.autograd.grad(loss, p_o)
            np.testing.assert_allclose(closed[i].numpy(), grad.numpy(), rtol=1e-10, atol=1e-12)


def by_hand(train, labels, logits, test, ood_feats, k, n_noise=None, ratio=1.0, class_mean=False, keep=None):
    """numpy/sklearn: prototypes, OOD prototype, gradients, k-th neighbour distance; ``keep``: the training
    rows of the subset (default: the first ceil(ratio N))."""
    keep = np.arange(math.ceil(ratio * len(train))) if keep is None else keep
    train, labels, logits = train[keep], labels[keep], logits[keep]
    c = logits.shape[1]
    protos = np.stack([train[labels == j].mean(0) for j in range(c)])
    ood = protos.mean(0) if class_mean else ood_feats[:n_noise].mean(0)

    def grads(h):
        every = np.vstack([protos, ood])
        s = -np.linalg.norm(h[:, None, :] - every[None], axis=2)
        p = np.exp(s - s.max(1, keepdims=True))
        p = p[:, -1] / p.sum(1)
        away = h - ood
        return p[:, None] * away / np.linalg.norm(away, axis=1, keepdims=True)

    bank = grads(train[logits.argmax(1) == labels])
    dist, _ = NearestNeighbors(n_neighbors=k).fit(bank).kneighbors(grads(test))
    return -dist[:, -1]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    centres = np.array([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]])
    labels = np.arange(90) % 3
    train = centres[labels] + rng.normal(size=(90, 4))
    w = centres / 3
    logits = train @ w.T  # a few training samples end up misclassified: out of the bank
    test = np.concatenate([centres[np.arange(12) % 3] + rng.normal(size=(12, 4)), rng.normal(size=(8, 4)) * 2])
    ood_val = rng.normal(size=(30, 4)) * 2 - 1
    f32 = lambda a: a.astype(np.float32).astype(np.float64)  # noqa: E731  (the pass stores float32)
    return {"train": train, "labels": labels, "w": w, "logits": f32(logits), "test": test, "ood_val": ood_val,
            "f32": f32}


OOD_VAL = {"ood_prototype": "ood_val"}


@pytest.mark.parametrize("kw", [OOD_VAL, {**OOD_VAL, "k": 3}, {**OOD_VAL, "n_noise_samples": 7, "subset": "first"},
                                {**OOD_VAL, "sampling_ratio": 0.5, "subset": "first"},
                                {"ood_prototype": "class_mean", "k": 2}])
def test_grood_equals_the_definition(data, kw):
    d, f32 = data, data["f32"]
    assert (d["logits"].argmax(1) != d["labels"]).any()  # the correctly-classified filter is exercised
    train = outputs(d["train"], d["w"], labels=d["labels"])
    pp = build("grood", **kw).fit(train, split_outputs={"ood_val": outputs(d["ood_val"])})
    want = by_hand(f32(d["train"]), d["labels"], d["logits"], f32(d["test"]), f32(d["ood_val"]),
                   kw.get("k", 1), kw.get("n_noise_samples", 100), kw.get("sampling_ratio", 1.0),
                   kw.get("ood_prototype") == "class_mean")
    np.testing.assert_allclose(pp.score(outputs(d["test"], d["w"])), want, rtol=1e-4, atol=1e-6)


def test_random_subsets_are_seeded_draws(data):
    d, f32 = data, data["f32"]
    pp = build("grood", **OOD_VAL, sampling_ratio=0.5, n_noise_samples=7, seed=3).fit(
        outputs(d["train"], d["w"], labels=d["labels"]), split_outputs={"ood_val": outputs(d["ood_val"])})
    keep = np.sort(torch.randperm(90, generator=torch.Generator().manual_seed(3))[:45].numpy())
    noise = torch.randperm(30, generator=torch.Generator().manual_seed(3))[:7].numpy()
    want = by_hand(f32(d["train"]), d["labels"], d["logits"], f32(d["test"]), f32(d["ood_val"])[noise], 1, 7,
                   keep=keep)
    np.testing.assert_allclose(pp.score(outputs(d["test"], d["w"])), want, rtol=1e-4, atol=1e-6)


def test_prediction_is_the_nearest_class_prototype(data):
    d = data
    train = outputs(d["train"], d["w"], labels=d["labels"])
    test = outputs([[2.9, 0, 0, 0], [0, 0, 2.0, 0.5], [1.0, 3.0, 0, 0]], -np.asarray(d["w"]))  # logits disagree
    ood_val = {"ood_val": outputs(d["ood_val"])}
    pp = build("grood", **OOD_VAL).fit(train, split_outputs=ood_val)
    f32 = d["f32"](d["train"])
    protos = np.stack([f32[d["labels"] == c].mean(0) for c in range(3)])
    want = np.linalg.norm(np.asarray(test.features, dtype=np.float64)[:, None] - protos[None], axis=2).argmin(1)
    np.testing.assert_array_equal(pp.predict(test), want)
    np.testing.assert_array_equal(want, [0, 2, 1])
    assert (want != test.logits.argmax(1).numpy()).all()  # the logits would say otherwise
    logits = build("grood", **OOD_VAL, prediction="logits").fit(train, split_outputs=ood_val)
    np.testing.assert_array_equal(logits.predict(test), test.logits.argmax(1).numpy())


def test_grood_sign_sample_at_the_ood_prototype_scores_lower(data):
    d = data
    pp = build("grood", **OOD_VAL).fit(outputs(d["train"], d["w"], labels=d["labels"]),
                                       split_outputs={"ood_val": outputs(d["ood_val"])})
    ood_centre = d["ood_val"].mean(0) + 0.1
    inlier, outlier = pp.score(outputs([[3.0, 0, 0, 0], ood_centre], d["w"]))
    assert inlier > outlier


def test_scheduler_hands_ood_val_to_fit(data):
    """The scheduler reads the ``fit_splits`` (ood_val) from its source and passes them to fit."""
    d = data
    splits = {"id_train": outputs(d["train"], d["w"], labels=d["labels"]), "id_val": outputs(d["test"], d["w"]),
              "id_test": outputs(d["test"], d["w"]), "ood_val": outputs(d["ood_val"])}
    got = Scheduler({"grood": build("grood", **OOD_VAL)}, FixedSource(splits)).run(["id_test"]).conf("grood")["id_test"]
    direct = build("grood", **OOD_VAL).fit(splits["id_train"], split_outputs={"ood_val": splits["ood_val"]})
    np.testing.assert_array_equal(got, direct.score(splits["id_test"]))
    del splits["ood_val"]
    with pytest.raises(DataError, match="'grood' fits on split 'ood_val'"):
        Scheduler({"grood": build("grood", **OOD_VAL)}, FixedSource(splits)).run(["id_test"])


def test_grood_without_ood_val_says_what_to_do(data):
    with pytest.raises(DataError, match="class_mean"):
        build("grood", **OOD_VAL).fit(outputs(data["train"], data["w"], labels=data["labels"]))


@pytest.mark.parametrize("kw, match", [({"k": 0}, "'k'"), ({"n_noise_samples": 0}, "'n_noise_samples'"),
                                       ({"sampling_ratio": 0}, "'sampling_ratio'"),
                                       ({"sampling_ratio": 1.5}, "'sampling_ratio'"),
                                       ({"ood_prototype": "noise"}, "'ood_prototype'"), ({"lam": 1.0}, "'lam'"),
                                       ({"lam": 0}, "'lam'"), ({"mix_layer": [1]}, "'mix_layer'"),
                                       ({"subset": "last"}, "'subset'")])
def test_grood_bad_settings_are_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        build("grood", **kw)


def test_run_on_a_benchmark_without_ood_val_is_refused_before_anything(tmp_path, monkeypatch):
    from conftest import MAIN_CONFIG

    from openood_ext.config import load_config
    from openood_ext.pipelines.validation import check_benchmark, check_postprocessor_splits, validate_run
    monkeypatch.chdir(tmp_path)
    cfg = load_config([MAIN_CONFIG], [f"output_dir={tmp_path / 'results'}",
                                      "postprocessors=[msp,{name: grood, ood_prototype: ood_val}]"])
    check_postprocessor_splits(cfg, check_benchmark(cfg))  # digits declares ood_val (its images may come with the run)
    del cfg.benchmark.ood["val"]
    with pytest.raises(ConfigError, match=r"postprocessors\[1\] \(grood\): fits on split 'ood_val', which benchmark "
                                          r"digits does not declare"):
        validate_run(cfg)
    cfg.postprocessors = ["grood", {"name": "grood", "ood_prototype": "class_mean"}]  # no OOD data needed
    check_postprocessor_splits(cfg, check_benchmark(cfg))
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def tiny():
    """A tiny random DigitsCNN, its training images and labels, and pipeline-style loaders."""
    from conftest import image_loader

    from openood_ext.networks import NETWORKS
    torch.manual_seed(0)
    net = NETWORKS.build({"name": "digits_cnn", "num_classes": 4, "in_channels": 1, "width": 2}).eval()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 1, 8, 8, generator=gen), torch.arange(40) % 4
    xt = torch.randn(12, 1, 8, 8, generator=gen) * torch.linspace(0.5, 3, 12)[:, None, None, None]
    loaders = {"id_train": image_loader(x, y), "id_val": image_loader(x[:8], y[:8]),
               "id_test": image_loader(xt, torch.zeros(12, dtype=torch.long)),
               "ood_val": image_loader(xt[6:] * 2, torch.full((6,), -1))}
    return net, loaders, x, y, xt


def test_synthetic_prototype_mixes_the_layer_as_defined(tiny):
    """``synthetic``: the class means of the mixing layer come from the id_train pass's taps, the mixed images
    give the OOD prototype; checked against the same steps written out on DigitsCNN's Sequential body, on the
    shared passes and on passes of its own (APS's route)."""
    from openood_ext.postprocessors.schedule import LoaderSource, fit_and_score
    net, loaders, x, y, xt = tiny
    kw = {"ood_prototype": "synthetic", "n_noise_samples": 10, "lam": 0.3, "seed": 2}
    got = Scheduler({"g": build("grood", **kw)}, LoaderSource(net, loaders), net, "cpu").run(["id_test"]).conf("g")
    alone = fit_and_score(build("grood", **kw), LoaderSource(net, loaders), ["id_test"], net, "cpu")

    with torch.no_grad():  # mix_layer 2 = the third stage, body.6 (the max-pool): body[:7] / body[7:]
        a = net.body[:7](x)
        means = torch.stack([a[y == c].mean(0) for c in range(4)])
        keep = torch.randperm(40, generator=torch.Generator().manual_seed(2))[:10].sort().values
        second = net(x[keep]).topk(2, dim=1).indices[:, 1]
        ood = net.body[7:](0.3 * a[keep] + 0.7 * means[second]).mean(0)
        logits, feats = net(x, return_feature=True)
        test_feats = net(xt, return_feature=True)[1]
    want = by_hand(feats.numpy().astype(np.float64), y.numpy(), logits.numpy().astype(np.float64),
                   test_feats.numpy().astype(np.float64), ood[None].numpy().astype(np.float64), 1, 1)
    np.testing.assert_allclose(got["id_test"], want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(alone["id_test"], got["id_test"], rtol=1e-6)


def test_synthetic_aps_scores_each_point_as_fitted_alone(tiny):
    from openood_ext.postprocessors.schedule import LoaderSource, fit_alone, fit_and_score
    net, loaders, *_ = tiny
    source = LoaderSource(net, loaders)
    combos = [{"k": 1, "n_noise_samples": 5, "sampling_ratio": 1.0}, {"k": 3, "n_noise_samples": 10, "sampling_ratio": 0.5}]
    first = build("grood", **combos[0])
    assert set(combos[0]) <= set(first.grid_params)  # APS takes the joint path
    joint = fit_alone(first, source, net, "cpu").aps_scores(combos, {s: loaders[s] for s in ("id_val", "ood_val")})
    for combo, (id_val, ood_val) in zip(combos, joint):
        alone = fit_and_score(build("grood", **combo), source, ["id_val", "ood_val"], net, "cpu")
        np.testing.assert_allclose(id_val, alone["id_val"], rtol=1e-6)
        np.testing.assert_allclose(ood_val, alone["ood_val"], rtol=1e-6)


def test_synthetic_mixes_a_module_input_on_resnets():
    """``mix_layer: stem`` on a ResNet is layer1's input (the stem's ReLU is functional), mixed through a
    forward pre-hook."""
    from conftest import image_loader

    from openood_ext.networks.resnet import ResNet18_32x32
    from openood_ext.postprocessors.schedule import LoaderSource
    torch.manual_seed(0)
    net = ResNet18_32x32(num_classes=3, width=4).eval()
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(24, 3, 16, 16, generator=gen), torch.arange(24) % 3  # 16 x 16: a cheaper pass, same layers
    xt = torch.randn(6, 3, 16, 16, generator=gen)
    loaders = {"id_train": image_loader(x, y, batch_size=10), "id_val": image_loader(x[:6], y[:6]),
               "id_test": image_loader(xt, torch.zeros(6, dtype=torch.long))}
    pp = build("grood", mix_layer="stem", n_noise_samples=6, seed=1)
    got = Scheduler({"g": pp}, LoaderSource(net, loaders), net, "cpu").run(["id_test"]).conf("g")["id_test"]
    with torch.no_grad():
        a = torch.relu(net.bn1(net.conv1(x)))
        means = torch.stack([a[y == c].mean(0) for c in range(3)])
        keep = torch.randperm(24, generator=torch.Generator().manual_seed(1))[:6].sort().values
        mixed = 0.5 * a[keep] + 0.5 * means[net(x[keep]).topk(2, dim=1).indices[:, 1]]
        ood = net.avgpool(net.layer4(net.layer3(net.layer2(net.layer1(mixed))))).flatten(1).mean(0)
        logits, feats = net(x, return_feature=True)
        test_feats = net(xt, return_feature=True)[1]
    want = by_hand(feats.double().numpy(), y.numpy(), logits.double().numpy(), test_feats.double().numpy(),
                   ood[None].double().numpy(), 1, 1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_rows_of_picks_the_same_rows_from_any_evaluation_loader():
    """The synthetic prototype's images are the same rows whether the split comes as a DataLoader (read
    at those rows only) or as batches from the decoded cache or the scheduler's replay (streamed)."""
    from openood_ext.postprocessors.grood import rows_of
    images, labels = torch.arange(23 * 2.0).reshape(23, 2), torch.arange(23)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=5)
    keep = torch.tensor([0, 4, 5, 11, 22])
    direct = [b for b in rows_of(loader, keep)]
    streamed = rows_of(list(loader), keep)  # a plain list of batches: no DataLoader to index
    for got in (direct, streamed):
        assert torch.equal(torch.cat([b[0] for b in got]), images[keep])
        assert torch.equal(torch.cat([torch.as_tensor(b[1]) for b in got]), labels[keep])
