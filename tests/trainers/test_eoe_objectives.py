"""EOE objectives: losses and scores on hand-computed cases; anomalous = higher score."""

import math

import pytest
import torch
from torch import nn

from openood_ext.errors import ConfigError
from openood_ext.networks import NETWORKS
from openood_ext.trainers import TRAINERS, Batch, TrainContext
from openood_ext.trainers.eoe_bce import bce_loss
from openood_ext.trainers.eoe_dsad import dsad_loss
from openood_ext.trainers.eoe_dsvdd import dsvdd_score, push_centre
from openood_ext.trainers.eoe_focal import focal_loss
from openood_ext.trainers.eoe_hsc import hsc_distance, hsc_loss, hsc_score


class Flat(nn.Module):
    """Identity on flattened inputs (features = the input vector); ``clf`` like EOE's nets."""

    def __init__(self, clf=False):
        super().__init__()
        self.clf = clf
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x.flatten(1) * self.w


def ctx():
    return TrainContext(device=torch.device("cpu"), num_classes=1, epochs=1, steps_per_epoch=1)


def trainer(name, clf=False, **kw):
    t = TRAINERS.get(name)(**kw)
    t.setup(Flat(clf), ctx())
    return t


def test_names_do_not_clash_with_fcdd():
    assert TRAINERS.get("hsc").__module__.endswith("trainers.hsc")
    for n in ("eoe_hsc", "eoe_bce", "eoe_focal", "eoe_dsad", "eoe_dsvdd"):
        assert TRAINERS.get(n).__module__.endswith("trainers." + n)


def test_hsc_hand_computed():
    f = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    d = math.sqrt(26) - 1
    assert hsc_distance(f).tolist() == pytest.approx([d, 0.0])
    normal = hsc_loss(f, torch.tensor([0, 0]))
    assert normal.item() == pytest.approx(d / 2)
    outlier = hsc_loss(f[:1], torch.tensor([1]))
    assert outlier.item() == pytest.approx(-math.log(1 - math.exp(-d) + 1e-9), rel=1e-6)
    assert hsc_score(f).tolist() == pytest.approx([1 - math.exp(-d), 0.0])
    # outlier at the origin: finite (eps 1e-9), very large loss
    assert hsc_loss(f[1:], torch.tensor([1])).item() == pytest.approx(-math.log(1e-9), rel=1e-3)


def test_bce_and_focal_hand_computed():
    logits = torch.tensor([[2.0], [-1.0]])
    labels = torch.tensor([1, 0])
    b1, b0 = math.log1p(math.exp(-2.0)), math.log1p(math.exp(-1.0))
    assert bce_loss(logits, labels).item() == pytest.approx((b1 + b0) / 2, rel=1e-6)
    p1, p0 = 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(-1.0))  # p_t of each sample
    expect = ((1 - p1) ** 2 * b1 + (1 - p0) ** 2 * b0) / 2
    assert focal_loss(logits, labels).item() == pytest.approx(expect, rel=1e-5)
    assert focal_loss(logits, labels, gamma=0).item() == pytest.approx(bce_loss(logits, labels).item(), rel=1e-6)


def test_dsad_hand_computed():
    f = torch.tensor([[1.0, 2.0], [1.0, 2.0]])
    assert dsad_loss(f, torch.tensor([0, 1])).item() == pytest.approx((5 + 1 / 5) / 2, rel=1e-6)


def test_dsvdd_centre_push_and_score():
    c = push_centre(torch.tensor([0.05, -0.05, 0.0, 0.3, -0.2]))
    assert c.tolist() == pytest.approx([0.1, -0.1, 0.1, 0.3, -0.2])
    assert dsvdd_score(torch.tensor([[1.0, 1.0]]), torch.tensor([1.0, -1.0])).item() == pytest.approx(4.0)
    t = trainer("eoe_dsvdd")
    # mean of per-batch means (not of all samples): batches of 1 and 3 images
    centre = t.compute_centre([torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 0.0], [3.0, 0.0], [3.0, 0.0]])])
    assert centre.tolist() == pytest.approx([2.0, 1.0])
    assert t.needs_outliers is None


@pytest.mark.parametrize("name,clf", [("eoe_hsc", False), ("eoe_dsad", False), ("eoe_bce", True), ("eoe_focal", True)])
def test_scores_signs_and_batch(name, clf):
    t = trainer(name, clf)
    if clf:  # 1-logit inputs: larger logit = more anomalous
        near, far = torch.tensor([[-3.0]]), torch.tensor([[3.0]])
    else:    # representation: larger norm = more anomalous
        near, far = torch.tensor([[0.1, 0.0]]), torch.tensor([[3.0, 4.0]])
    s, heat = t.anomaly_scores(torch.cat([near, far]))
    assert heat is None and s.shape == (2,) and s[1] > s[0]
    # B normals + B outliers: the loss is lower when normals are "near" and outliers "far"
    good = t.training_step(Batch(near.repeat(2, 1), torch.zeros(2, dtype=torch.long), far.repeat(2, 1), 0, 0, 0))
    bad = t.training_step(Batch(far.repeat(2, 1), torch.zeros(2, dtype=torch.long), near.repeat(2, 1), 0, 0, 0))
    assert good["loss"] < bad["loss"]
    assert good["score_outlier"] > good["score_normal"]


def test_batch_is_normals_plus_outliers_mean_over_2b():
    t = trainer("eoe_dsad")
    normals, outliers = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    out = t.training_step(Batch(normals, torch.zeros(2, dtype=torch.long), outliers, 0, 0, 0))
    assert out["loss"].item() == pytest.approx((1 + 4 + 1 / 4 + 1) / 4, rel=1e-6)


def test_head_mismatch_is_config_error():
    with pytest.raises(ConfigError, match="1-logit head"):
        TRAINERS.get("eoe_bce")().setup(Flat(False), ctx())
    with pytest.raises(ConfigError, match="no classifier head"):
        TRAINERS.get("eoe_hsc")().setup(Flat(True), ctx())
    with pytest.raises(ConfigError, match="'gamma': expected float >= 0"):
        TRAINERS.build({"name": "eoe_focal", "gamma": -1})


def test_eoe_networks_shapes():
    net = NETWORKS.build({"name": "eoe_cnn32"})
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 256)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128] and all(c.kernel_size == (5, 5) for c in convs)
    assert net.fc1.in_features == 128 * 4 * 4 and net.fc1.out_features == 512
    out, rep = NETWORKS.build({"name": "eoe_cnn32", "clf": True})(torch.randn(2, 3, 32, 32), return_feature=True)
    assert out.shape == (2, 1) and rep.shape == (2, 256)
    net28 = NETWORKS.build({"name": "eoe_cnn28"})
    assert net28(torch.randn(2, 1, 28, 28)).shape == (2, 32)
    with pytest.raises(ValueError, match="expected inputs"):
        net28(torch.randn(2, 1, 32, 32))


class _CentreBench:
    """A benchmark stand-in recording how ``dataset`` is asked for: raw pixel value 0.8 everywhere,
    normalised by the preprocessor's mean/std, +0.1 when built with training augmentation."""

    def __init__(self):
        self.preprocessor = {"channels": 1, "mean": [0.5], "std": [0.25]}
        self.calls = []

    def split(self, name):
        return name

    def dataset(self, split, train=False):
        pre = self.preprocessor
        self.calls.append((split, train, pre["mean"][0], pre["std"][0]))
        value = (0.8 + (0.1 if train else 0.0) - pre["mean"][0]) / pre["std"][0]
        return [(torch.full((1, 2, 2), value), 0, 0)] * 5


@pytest.mark.parametrize("inputs, value, train", [("normalised", (0.8 - 0.5) / 0.25, False), ("published", 0.9, True)])
def test_dsvdd_centre_inputs_switch(inputs, value, train):
    t = TRAINERS.get("eoe_dsvdd")(centre_inputs=inputs, centre_batch_size=2)
    bench = _CentreBench()
    t.setup(Flat(), TrainContext(device=torch.device("cpu"), num_classes=1, epochs=1, steps_per_epoch=1,
                                 benchmark=bench, seed=3))
    t.on_epoch_start(0)
    # published: EOE's training loader (augmented, before its GPU Normalize) in batches of 2, 2, 1
    assert bench.calls[-1][:2] == ("id_train", train)
    assert bench.preprocessor["mean"] == [0.5]  # the benchmark is left as it was
    assert t.centre.value.tolist() == pytest.approx([value] * 4)
    assert push_centre(torch.tensor([0.0, 0.05]), keep_zeros=True).tolist() == pytest.approx([0.0, 0.1])
