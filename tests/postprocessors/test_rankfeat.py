"""RankFeat against its definition on a ResNet-18: Block 4's and Block 3's rank-1 components removed,
the forward continued from each edited map, the logits averaged, the energy taken; computed by hand
with the network's own modules."""

import numpy as np
import pytest
import torch
from conftest import image_loader
from zoo_helpers import build

from openood_ext.errors import ConfigError
from openood_ext.networks.resnet import ResNet18_32x32
from openood_ext.networks.small_cnn import DigitsCNN
from openood_ext.postprocessors.rankfeat import chained_tails, remove_rank1
from openood_ext.postprocessors.schedule import LoaderSource, Scheduler


def test_remove_rank1_equals_numpy_svd():
    x = torch.randn(3, 4, 2, 3, dtype=torch.float64)
    for i in range(3):
        m = x[i].reshape(4, 6).numpy()
        u, s, vh = np.linalg.svd(m, full_matrices=False)
        np.testing.assert_allclose(remove_rank1(x)[i].reshape(4, 6).numpy(), m - s[0] * np.outer(u[:, 0], vh[0]),
                                   atol=1e-12)
    rank1 = torch.randn(2, 4, 1, dtype=torch.float64) @ torch.randn(2, 1, 6, dtype=torch.float64)
    assert remove_rank1(rank1.reshape(2, 4, 2, 3)).abs().max() < 1e-12


@torch.no_grad()
def test_rankfeat_equals_the_blockwise_definition_and_is_batch_independent():
    torch.manual_seed(0)
    net = ResNet18_32x32(num_classes=5, width=4).eval()  # small, same blocks
    x = torch.randn(5, 3, 16, 16)  # layer3 4x4, layer4 2x2 maps: rank > 1

    def upto(x, block):
        out = net.layer3(net.layer2(net.layer1(torch.relu(net.bn1(net.conv1(x))))))
        return out if block == 3 else net.layer4(out)

    head = lambda f: net.fc(torch.flatten(net.avgpool(f), 1))  # noqa: E731
    logits = (head(remove_rank1(upto(x, 4))) + head(net.layer4(remove_rank1(upto(x, 3))))) / 2
    pp = build("rankfeat", temperature=2.0)
    assert pp.needs_network and pp.uses_taps  # rides the shared pass unless the network has no chained tail
    pp.attach_network(net, "cpu")
    conf = pp.score_loader(image_loader(x, torch.zeros(5).long(), batch_size=3))
    assert pp.layer_names == ["layer3", "layer4"]
    np.testing.assert_allclose(conf, (2.0 * torch.logsumexp(logits / 2.0, 1)).numpy(), rtol=1e-5)
    one_layer = build("rankfeat", layers=["layer4"])
    one_layer.attach_network(net, "cpu")
    np.testing.assert_allclose(one_layer.score_loader(image_loader(x, torch.zeros(5).long(), batch_size=5)),
                               torch.logsumexp(head(remove_rank1(upto(x, 4))), 1).numpy(), rtol=1e-5)


def test_rankfeat_bad_temperature_is_a_config_error():
    with pytest.raises(ConfigError, match="'temperature': expected float > 0"):
        build("rankfeat", temperature=0)


def _splits(shape, n=(12, 6, 9, 7)):
    gen = torch.Generator().manual_seed(3)
    return {k: image_loader(torch.randn(m, *shape, generator=gen), torch.arange(m) % 3, batch_size=4)
            for k, m in zip(("id_train", "id_val", "id_test", "far"), n)}


def test_rankfeat_rides_the_shared_pass_on_a_resnet_and_scores_as_its_own_passes():
    """The tails after layer3 and layer4 (layer4 -> avgpool -> fc, avgpool -> fc) reproduce the network's
    logits, so RankFeat scores from the shared pass's taps; its own passes give the same scores."""
    torch.manual_seed(0)
    net = ResNet18_32x32(num_classes=3, width=4).eval()
    loaders = _splits((3, 16, 16))
    sched = Scheduler({"rankfeat": build("rankfeat"), "gram": build("gram")}, LoaderSource(net, loaders), net, "cpu")
    result = sched.run(["id_test", "far"])
    assert sched.routes["rankfeat"] == "taps" and sched.pps["rankfeat"].layer_names == ["layer3", "layer4"]
    alone = build("rankfeat")
    alone.attach_network(net, "cpu")
    for split in ("id_test", "far"):
        np.testing.assert_allclose(result.scores["rankfeat"][split].conf, alone.score_loader(loaders[split]), rtol=1e-5)
    assert result.seconds["rankfeat"] > 0  # its taps' work is charged to it


def test_rankfeat_without_a_chained_tail_runs_its_own_passes():
    """DigitsCNN's stages sit inside one Sequential with convolutions between them: no chained tail, so
    the scheduler gives RankFeat the network route; the scores are its own passes'."""
    torch.manual_seed(0)
    net = DigitsCNN(num_classes=3, in_channels=1, width=2).eval()
    loaders = _splits((1, 8, 8))
    example = next(iter(loaders["id_train"]))[0][:2]
    assert chained_tails(net, ["body.2", "body.5"], example) is None
    sched = Scheduler({"rankfeat": build("rankfeat", layers=[0, 1])}, LoaderSource(net, loaders), net, "cpu")
    result = sched.run(["far"])
    assert sched.routes["rankfeat"] == "network"
    alone = build("rankfeat", layers=[0, 1])
    alone.attach_network(net, "cpu")
    np.testing.assert_array_equal(result.scores["rankfeat"]["far"].conf, alone.score_loader(loaders["far"]))


def test_rankfeat_attached_without_a_training_split_scores_with_its_own_passes():
    torch.manual_seed(0)
    net = ResNet18_32x32(num_classes=3, width=4).eval()
    loaders = _splits((3, 16, 16))
    pp = build("rankfeat")
    pp.attach_network(net, "cpu", lambda split: {"far": loaders["far"]}[split])  # no id_train to probe with
    assert not pp.uses_taps
    assert pp.score_loader(loaders["far"]).shape == (7,)
