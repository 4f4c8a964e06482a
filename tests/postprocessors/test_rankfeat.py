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
from openood_ext.postprocessors.rankfeat import remove_rank1


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
    assert pp.needs_network and not pp.uses_taps  # the scheduler's network route
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
