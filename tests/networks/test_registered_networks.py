"""Every registered network, built from its defaults plus the few overrides below, runs a forward pass on a
tiny batch of its declared input size and returns its documented output (one test id per network)."""

from __future__ import annotations

import inspect

import pytest
import torch

from openood_ext.networks import NETWORKS
from sweep_helpers import builtin_names


def _anchors(tmp_path):
    torch.manual_seed(0)
    torch.save({"anchors": torch.randn(3, 6)}, tmp_path / "anchors.pt")
    return {"anchors": str(tmp_path / "anchors.pt"), "num_classes": 3, "backbone": "digits_cnn", "width": 4,
            "in_channels": 1}


# name -> (overrides or a function of tmp_path giving them, input shape [C, H, W], output kind)
# kinds: "classifier" logits [B, num_classes] (+ return_feature -> (logits, [B, D]));
# "rep" EOE representation [B, rep_dim] (+ return_feature); "fcdd" one-channel map with heat() -> scores/heatmaps;
# "hsc" [B, rep_dim]; "recon" reconstruction, same shape as x; "ae_score" [B, 1] = -MSE (+ latent code);
# "embedding" CLIP image embedding [B, D].
SPECS = {
    "ae_cnn28": ({}, (1, 28, 28), "recon"),
    "ae_cnn32": ({}, (3, 32, 32), "recon"),
    "ae_mnist_conv": ({"latent_dim": 8}, (1, 28, 28), "ae_score"),
    "ae_resnet18_32x32": ({"width": 4, "latent_dim": 8}, (3, 32, 32), "ae_score"),
    "ae_resnet50_32x32": ({"width": 2, "latent_dim": 8}, (3, 32, 32), "ae_score"),
    "anchor_cosine": (_anchors, (1, 8, 8), "classifier"),
    "clip": ({"model": "tiny-random"}, (3, 32, 32), "embedding"),
    "digits_cnn": ({"width": 4, "num_classes": 3}, (1, 8, 8), "classifier"),
    "eoe_cnn28": ({"rep_dim": 8}, (1, 28, 28), "rep"),
    "eoe_cnn32": ({"rep_dim": 8}, (3, 32, 32), "rep"),
    "eoe_resnet224": ({"rep_dim": 8}, (3, 224, 224), "rep"),
    "fcdd_cnn28": ({}, (1, 28, 28), "fcdd"),
    "fcdd_cnn32": ({}, (3, 32, 32), "fcdd"),
    "fcdd_vgg11_224": ({"pretrained": False}, (3, 224, 224), "fcdd"),
    "hsc_cnn28": ({}, (1, 28, 28), "hsc"),  # FCDD's CNN28_W: 48-d
    "hsc_cnn32": ({}, (3, 32, 32), "hsc"),  # FCDD's CNN32_LW3K: 64-d
    "lenet": ({"num_classes": 3}, (1, 28, 28), "classifier"),
    "mnist_conv": ({"num_classes": 3}, (1, 28, 28), "classifier"),
    "npos_net": ({"num_classes": 3, "backbone": "digits_cnn", "in_channels": 1, "width": 4, "head_dim": 8,
                  "mlp_hidden": 8}, (1, 8, 8), "classifier"),
    "npos_resnet18_32x32": ({"num_classes": 3, "width": 4, "head_dim": 8, "mlp_hidden": 8}, (3, 32, 32), "classifier"),
    "npos_resnet34_32x32": ({"num_classes": 3, "width": 4, "head_dim": 8, "mlp_hidden": 8}, (3, 32, 32), "classifier"),
    "resnet18_224x224": ({"num_classes": 3}, (3, 224, 224), "classifier"),
    "resnet18_32x32": ({"num_classes": 3, "width": 4}, (3, 32, 32), "classifier"),
    "resnet34_32x32": ({"num_classes": 3, "width": 4}, (3, 32, 32), "classifier"),
    "resnet50": ({"num_classes": 3}, (3, 224, 224), "classifier"),
    "timm": ({"model": "resnet18", "num_classes": 3}, (3, 32, 32), "classifier"),
    "timm_vit": ({"num_classes": 3, "model": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 8, "embed_dim": 16,
                  "depth": 1, "num_heads": 2}, (3, 32, 32), "classifier"),
    "vmdls": ({"num_classes": 3, "latent_dim": 4}, (1, 28, 28), "classifier"),
}

B = 2


def _default(factory, key):
    return inspect.signature(factory).parameters[key].default


@pytest.mark.parametrize("name", builtin_names(NETWORKS))
def test_registered_network_forward(name, tmp_path):
    assert name in SPECS, f"network {name!r} is registered but has no entry in SPECS (add its tiny config)"
    overrides, shape, kind = SPECS[name]
    overrides = overrides(tmp_path) if callable(overrides) else overrides
    torch.manual_seed(0)
    net = NETWORKS.build({"name": name, **overrides}).eval()
    x = torch.rand(B, *shape)
    with torch.no_grad():
        out = net(x)
    assert torch.is_tensor(out) and torch.isfinite(out).all(), name

    def cfg(key):
        return overrides.get(key, _default(NETWORKS.get(name), key))

    if kind == "classifier":
        assert out.shape == (B, cfg("num_classes"))
    elif kind == "rep":
        assert out.shape == (B, cfg("rep_dim"))
    elif kind == "hsc":
        assert out.shape == (B, net.fc_final.out_features)
    elif kind == "recon":
        assert out.shape == x.shape
    elif kind == "ae_score":
        assert out.shape == (B, 1) and (out <= 0).all()  # minus the per-sample reconstruction MSE
    elif kind == "embedding":
        assert out.dim() == 2 and out.shape[0] == B and out.shape[1] > 0
    elif kind == "fcdd":
        assert out.dim() == 4 and out.shape[:2] == (B, 1)
        scores, heatmaps = net.heat(x)
        assert scores.shape == (B,) and heatmaps.shape == (B, *shape[1:])
        assert (scores >= 0).all() and torch.isfinite(heatmaps).all()
    else:  # pragma: no cover
        raise AssertionError(kind)

    if "return_feature" in inspect.signature(net.forward).parameters:
        with torch.no_grad():
            out2, feat = net(x, return_feature=True)
        assert torch.allclose(out2, out, atol=1e-5), "return_feature changed the output"
        assert feat.dim() == 2 and feat.shape[0] == B and torch.isfinite(feat).all()
        if kind == "ae_score":
            assert feat.shape[1] == cfg("latent_dim")
        if kind == "rep" and not cfg("clf"):
            assert torch.allclose(feat, out, atol=1e-5)
