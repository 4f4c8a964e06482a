"""EOE's ImageNet-30 network: the backbone equals torchvision's resnet18 in names and shapes,
CBAM sits in every block with the published module names, heads and the published init switch."""

from __future__ import annotations

import pytest
import torch
import torchvision

from openood_ext.config import load_config, to_plain
from openood_ext.networks import NETWORKS


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return NETWORKS.build({"name": "eoe_resnet224", "clf": True}).eval()


def test_backbone_matches_torchvision_resnet18(net):
    ours = net.state_dict()
    tv = torchvision.models.resnet18(weights=None).state_dict()
    backbone = {k: v.shape for k, v in tv.items() if not k.startswith("fc.")}
    assert {k: ours[k].shape for k in backbone} == backbone
    extra = {k for k in ours if k not in tv}
    # per block: ChannelGate MLP C -> C/16 -> C and the spatial gate's 7x7 conv + BN (published names)
    for layer, c in (("layer1", 64), ("layer2", 128), ("layer3", 256), ("layer4", 512)):
        for b in (0, 1):
            p = f"{layer}.{b}.cbam"
            assert ours[f"{p}.ChannelGate.mlp.1.weight"].shape == (c // 16, c)
            assert ours[f"{p}.ChannelGate.mlp.3.weight"].shape == (c, c // 16)
            assert ours[f"{p}.SpatialGate.spatial.conv.weight"].shape == (1, 2, 7, 7)
            assert f"{p}.SpatialGate.spatial.bn.running_mean" in ours
    assert {k for k in extra if "cbam" not in k} == {"linear.weight", "linear.bias"}  # fc: 512 -> 256 here
    assert ours["fc.weight"].shape == (256, 512) and ours["linear.weight"].shape == (1, 256)


def test_forward_shapes_and_input_check(net):
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        logit, rep = net(x, return_feature=True)
    assert logit.shape == (2, 1) and rep.shape == (2, 256)
    rep_only = NETWORKS.build({"name": "eoe_resnet224", "rep_dim": 32}).eval()
    with torch.no_grad():
        assert rep_only(x[:1]).shape == (1, 32)
    with pytest.raises(ValueError, match=r"expected inputs \[B, 3, 224, 224\]"):
        net(torch.randn(1, 3, 32, 32))


def test_published_init_switch():
    torch.manual_seed(0)
    pub = NETWORKS.build({"name": "eoe_resnet224", "published_init": True})
    assert torch.all(pub.layer1[0].cbam.SpatialGate.spatial.bn.weight == 0)  # constructor init
    assert torch.all(pub.layer1[0].bn1.weight == 1) and torch.all(pub.fc.bias == 0)
    default = NETWORKS.build({"name": "eoe_resnet224"})
    assert torch.all(default.layer1[0].cbam.SpatialGate.spatial.bn.weight == 1)  # PyTorch default (reset)


@pytest.mark.parametrize("obj, clf", [("hsc", False), ("bce", True)])
def test_imagenet30_configs_have_eoe_settings(obj, clf):
    cfg = load_config([f"configs/experiments/eoe/ad_imagenet30_eoe_{obj}.yml"])
    tr = to_plain(cfg.trainer)
    assert tr["name"] == f"eoe_{obj}" and tr["epochs"] == 150 and tr["scheduler"]["milestones"] == [100, 125]
    assert tr["optimizer"] == {"name": "adam", "lr": 1e-3, "weight_decay": 0.0} and tr["batch_size"] == 128
    pre = to_plain(cfg.benchmark.preprocessor)
    assert pre["resize"] == 256 and pre["image_size"] == 224 and pre["train_crop"] == "random"
    assert pre["normalize"] == "normal_class" and cfg.network.name == "eoe_resnet224" and cfg.network.clf == clf
