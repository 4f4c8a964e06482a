"""Deep ensembles against their definition (mean softmax of the members, computed directly on a tiny
net), OpenOOD's logit average behind its switch, and members that do not fit the run's network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import image_loader
from pp_helpers import TINY_NET, refused_before_run, save_members

from openood_ext.errors import ConfigError
from openood_ext.networks import NETWORKS
from openood_ext.networks.checkpoint import load_checkpoint
from openood_ext.postprocessors import POSTPROCESSORS
from openood_ext.postprocessors.ensemble import StackedMembers


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    return save_members(tmp_path_factory.mktemp("members"), seeds=(1, 2, 3))


def test_ensemble_is_the_mean_softmax_of_its_members(members):
    torch.manual_seed(0)
    run_net = NETWORKS.build(TINY_NET).eval()
    x = torch.randn(10, 1, 8, 8)
    nets = []
    for path in members:
        net = NETWORKS.build(TINY_NET).eval()
        load_checkpoint(path, net)
        nets.append(net)
    with torch.no_grad():
        logits = torch.stack([n(x) for n in nets]).double()
    by_hand = {"probs": logits.softmax(dim=2).mean(dim=0), "logits": logits.mean(dim=0).softmax(dim=1)}
    for average, probs in by_hand.items():
        pp = POSTPROCESSORS.build({"name": "ensemble", "checkpoints": members, "average": average})
        pp.attach_network(run_net, "cpu")
        conf, preds = pp.score_loader(image_loader(x, torch.zeros(10, dtype=torch.long), batch_size=4))
        np.testing.assert_allclose(conf, probs.max(dim=1).values, rtol=1e-6)
        np.testing.assert_array_equal(preds, probs.argmax(dim=1))
        assert pp._members.stacked is not None  # one vectorised call ran the members (no fallback)
    with torch.no_grad():
        one_by_one, stacked = StackedMembers(nets, stack=False)(x), StackedMembers(nets, stack=True)(x)
    np.testing.assert_allclose(stacked, one_by_one, atol=1e-6)
    np.testing.assert_allclose(one_by_one, logits.float(), atol=1e-6)
    assert not np.allclose(by_hand["probs"].max(1).values, by_hand["logits"].max(1).values)
    assert pp.hyperparameters()["checkpoints"] == members


def test_plain_state_dict_member_loads_into_the_run_architecture(members, tmp_path):
    plain = tmp_path / "plain.ckpt"
    net = NETWORKS.build(TINY_NET)
    load_checkpoint(members[0], net)
    torch.save(net.state_dict(), plain)
    one = POSTPROCESSORS.build({"name": "ensemble", "checkpoints": [str(plain)]})
    one.attach_network(NETWORKS.build(TINY_NET).eval(), "cpu")
    x = torch.randn(4, 1, 8, 8)
    conf, _ = one.score_loader(image_loader(x, torch.zeros(4, dtype=torch.long)))
    np.testing.assert_allclose(conf, net.eval()(x).softmax(dim=1).max(dim=1).values.detach(), rtol=1e-6)


def test_members_of_another_architecture_or_class_count_are_refused(tmp_path, monkeypatch):
    net = NETWORKS.build(TINY_NET)
    classes = save_members(tmp_path / "c", seeds=(1,), num_classes=3)[0]
    wider = save_members(tmp_path / "w", seeds=(1,), width=4)[0]
    lenet = save_members(tmp_path / "l", seeds=(1,), name="lenet", num_classes=4, in_channels=1)[0]
    for path, why in ((classes, "has 3 classes, the run's network 4"),
                      (wider, r"has body.0.weight of shape \(4, 1, 3, 3\), the run's network \(2, 1, 3, 3\)"),
                      (lenet, "is a 'lenet' network, the run's network is 'digits_cnn'")):
        pp = POSTPROCESSORS.build({"name": "ensemble", "checkpoints": [path]})
        with pytest.raises(ConfigError, match=rf"checkpoints\[0\] {path} {why}"):
            pp.attach_network(net, "cpu")
    # in a run: refused before the run directory exists (the digits network has 6 classes)
    good = save_members(tmp_path / "ok", seeds=(1,), num_classes=6, width=32)[0]
    refused_before_run(tmp_path, monkeypatch, ["msp", {"name": "ensemble", "checkpoints": [good, classes]}],
                       rf"postprocessors\[1\] \(ensemble\): .*checkpoints\[1\] {classes} has 3 classes, "
                       r"the run's network 6")
    refused_before_run(tmp_path, monkeypatch, [{"name": "ensemble", "checkpoints": [str(tmp_path / "none.pt")]}],
                       r"checkpoints\[0\] .*none.pt: no such checkpoint file")
    refused_before_run(tmp_path, monkeypatch, [{"name": "ensemble", "checkpoints": []}], "checkpoints")
