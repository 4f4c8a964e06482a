"""The ``timm`` network: any timm model with logits, penultimate features and its last linear layer."""

from __future__ import annotations

import pytest
import torch

from openood_ext.errors import CheckpointError, ConfigError
from openood_ext.features import extract_outputs
from openood_ext.networks import NETWORKS
from openood_ext.postprocessors import POSTPROCESSORS

# OpenOOD's ImageNet backbones, shrunk where timm allows it (fewer blocks, smaller inputs) to stay fast.
MODELS = {
    "resnet50": ({}, 64, 2048),
    "vit_base_patch16_224": ({"img_size": 32, "depth": 2}, 32, 768),
    "swin_tiny_patch4_window7_224": ({"img_size": 64, "window_size": 2, "depths": [1, 1, 1, 1]}, 64, 768),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def built(request):
    kwargs, size, dim = MODELS[request.param]
    torch.manual_seed(0)
    net = NETWORKS.build({"name": "timm", "model": request.param, "num_classes": 5, "pretrained": False, **kwargs})
    images = torch.randn(12, 3, size, size)
    loader = [(images[i:i + 6], torch.arange(i, i + 6) % 5) for i in (0, 6)]
    return request.param, net, images, dim, extract_outputs(net, loader)


def test_logits_are_the_last_linear_layer_of_the_features(built):
    _, net, images, dim, out = built
    assert out.features.shape == (12, dim) and out.logits.shape == (12, 5) and net.feature_dim == dim
    fc = net.get_fc_layer()
    assert isinstance(fc, torch.nn.Linear) and fc is net.timm_model.get_classifier()
    torch.testing.assert_close(out.logits, out.features @ fc.weight.T + fc.bias, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.extras["fc_weight"], fc.weight.detach())
    with torch.no_grad():  # the wrapper computes what timm's own forward computes
        torch.testing.assert_close(net(images[:3]), net.timm_model(images[:3]), rtol=1e-5, atol=1e-5)
    assert list(net.state_dict()) == list(net.timm_model.state_dict())  # timm's names, nothing twice


def test_postprocessors_run_on_the_backbone(built):
    name, out = built[0], built[4]
    ebo = POSTPROCESSORS.build({"name": "ebo", "temperature": 1.0}).fit(out)
    torch.testing.assert_close(torch.as_tensor(ebo.score(out)).float(), torch.logsumexp(out.logits, 1),
                               rtol=1e-5, atol=1e-5)
    for spec in ({"name": "react", "percentile": 90}, {"name": "knn", "k": 3}):
        conf = POSTPROCESSORS.build(spec).fit(out).score(out)
        assert conf.shape == (12,) and torch.isfinite(torch.as_tensor(conf)).all(), (name, spec)


def test_local_pretrained_file_loads_the_backbone_and_reinitialises_a_foreign_head(tmp_path):
    import timm
    src = timm.create_model("resnet18", num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(src.state_dict(), path)
    net = NETWORKS.build({"name": "timm", "model": "resnet18", "num_classes": 3, "pretrained": str(path)})
    torch.testing.assert_close(net.state_dict()["layer4.1.conv2.weight"], src.state_dict()["layer4.1.conv2.weight"])
    assert net.get_fc_layer().weight.shape == (3, 512)


def test_no_hub_and_no_file_is_one_line_naming_both(monkeypatch, tmp_path):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no 50 s of retries
    with pytest.raises(CheckpointError) as err:
        NETWORKS.build({"name": "timm", "model": "resnet18", "num_classes": 3, "pretrained": True})
    msg = str(err.value)
    assert "\n" not in msg and "hub" in msg and "network.pretrained_file" in msg
    with pytest.raises(CheckpointError, match=r"hub weights failed .* local weights .*missing\.pth not found"):
        NETWORKS.build({"name": "timm", "model": "resnet18", "num_classes": 3, "pretrained": True,
                        "pretrained_file": str(tmp_path / "missing.pth")})
    with pytest.raises(ConfigError, match="not a timm model"):
        NETWORKS.build({"name": "timm", "model": "resnet_fifty", "num_classes": 3})


def test_to_and_dtype_reach_timm_top_level_parameters():
    net = NETWORKS.build({"name": "timm", "model": "vit_tiny_patch16_224", "num_classes": 2, "img_size": 32,
                          "patch_size": 8, "depth": 1})
    net.to(torch.float64)
    assert net.timm_model.cls_token is net.cls_token and net.cls_token.dtype == torch.float64
    assert net(torch.randn(1, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64
    net.train(False)
    assert not net.timm_model.training
