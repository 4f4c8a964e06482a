"""Finding a classifier's penultimate features, classifier layer and logits without changing the model:
torchvision, timm and this toolkit's networks, and the one-line errors for models it cannot read."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from openood_ext.api.model import ModelAdapter, architecture_fingerprint, probe, weights_hash
from openood_ext.errors import ConfigError
from openood_ext.networks import NETWORKS


def check_features_feed_the_classifier(adapter: ModelAdapter, x: torch.Tensor, classes: int) -> torch.Tensor:
    adapter.eval()
    with torch.no_grad():
        logits, feat = adapter(x, return_feature=True)
        plain = adapter(x)
    fc = adapter.get_fc_layer()
    assert logits.shape == (len(x), classes) and feat.ndim == 2 and feat.shape[1] == fc.in_features
    torch.testing.assert_close(fc(feat), logits)
    torch.testing.assert_close(plain, logits)
    return feat


def test_torchvision_resnet_features_are_the_input_of_fc():
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.resnet18(weights=None, num_classes=7)
    adapter = ModelAdapter(net)
    assert not adapter.native and adapter.feature_layer == "fc" and adapter.get_fc_layer() is net.fc
    feat = check_features_feed_the_classifier(adapter, torch.randn(2, 3, 32, 32), 7)
    assert feat.shape == (2, 512)
    # the model is unchanged: same modules, no hook left behind, same names for layer taps
    assert dict(adapter.named_modules()).keys() - {""} == dict(net.named_modules()).keys() - {""}
    assert not net.fc._forward_pre_hooks and not net.fc._forward_hooks
    assert adapter.state_dict().keys() == net.state_dict().keys()


def test_timm_models_features_are_the_input_of_their_head():
    timm = pytest.importorskip("timm")
    cnn = timm.create_model("resnet18", pretrained=False, num_classes=5)
    adapter = ModelAdapter(cnn)
    assert adapter.feature_layer == "fc"
    check_features_feed_the_classifier(adapter, torch.randn(2, 3, 32, 32), 5)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=32, patch_size=8)
    adapter = ModelAdapter(vit)
    assert adapter.feature_layer == "head"
    assert check_features_feed_the_classifier(adapter, torch.randn(2, 3, 32, 32), 4).shape == (2, 192)


@pytest.mark.parametrize("spec, shape", [({"name": "digits_cnn"}, (2, 1, 8, 8)),
                                         ({"name": "resnet18_32x32", "num_classes": 10}, (2, 3, 32, 32))])
def test_toolkit_networks_use_their_own_features(spec, shape):
    net = NETWORKS.build(spec).eval()
    adapter = ModelAdapter(net)
    assert adapter.native and adapter.get_fc_layer() is net.get_fc_layer()
    x = torch.randn(*shape)
    with torch.no_grad():
        logits, feat = net(x, return_feature=True)
        a_logits, a_feat = adapter(x, return_feature=True)
    assert torch.equal(logits, a_logits) and torch.equal(feat, a_feat)


def test_a_named_feature_layer_is_used_and_its_output_can_be_chosen():
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    adapter = ModelAdapter(net, feature_layer="2:output")
    _, feat = adapter(torch.randn(4, 12), return_feature=True)
    assert feat.shape == (4, 8) and (feat >= 0).all()
    assert adapter.classifier is None
    with pytest.raises(ConfigError, match="not an nn.Linear"):
        adapter.get_fc_layer()
    with pytest.raises(ConfigError, match="feature_layer='nope' is not a module"):
        ModelAdapter(net, feature_layer="nope")


@pytest.mark.parametrize("net", [nn.Sequential(nn.Flatten(), nn.Linear(12, 3), nn.Softmax(dim=1)),
                                 nn.Sequential(nn.Flatten(), nn.Linear(12, 3), nn.Linear(3, 3), nn.Tanh())],
                         ids=["softmax_last", "tanh_last"])
def test_a_model_whose_last_layer_is_not_linear_is_one_line_naming_feature_layer(net):
    with pytest.raises(ConfigError) as err:
        ModelAdapter(net)(torch.randn(2, 12), return_feature=True)
    assert "feature_layer" in str(err.value) and "\n" not in str(err.value)


def test_a_model_without_linear_layer_is_one_line_naming_feature_layer():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ConfigError) as err:
        ModelAdapter(net)
    assert "feature_layer" in str(err.value) and "\n" not in str(err.value)


class Multi(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.body = nn.Linear(12, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        feat = self.body(x.flatten(1))
        logits = self.fc(feat)
        if self.kind == "dict_logits":
            return {"feat": feat, "logits": logits}
        if self.kind == "dict_ambiguous":
            return {"a": feat, "b": logits}
        if self.kind == "tuple_ambiguous":
            return logits, feat
        return logits, feat[:, :, None]  # tuple with one 2-D tensor


@pytest.mark.parametrize("kind", ["dict_logits", "tuple_unambiguous"])
def test_tuple_and_dict_outputs_give_their_logits_when_unambiguous(kind):
    net = Multi(kind)
    check_features_feed_the_classifier(ModelAdapter(net), torch.randn(2, 12), 3)


@pytest.mark.parametrize("kind, key", [("dict_ambiguous", "b"), ("tuple_ambiguous", 0)])
def test_ambiguous_outputs_are_one_line_naming_output_key(kind, key):
    with pytest.raises(ConfigError) as err:
        ModelAdapter(Multi(kind))(torch.randn(2, 12))
    assert "output_key" in str(err.value) and "\n" not in str(err.value)
    check_features_feed_the_classifier(ModelAdapter(Multi(kind), output_key=key), torch.randn(2, 12), 3)


def test_another_class_count_than_the_benchmark_is_one_line():
    adapter = ModelAdapter(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)))
    with pytest.raises(ConfigError) as err:
        probe(adapter, torch.randn(2, 12), 6, "benchmark digits")
    assert "3 logits but benchmark digits has 6 classes" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # what users still bring
def test_torchscript_models_cannot_be_hooked_one_line():
    net = torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)))
    with pytest.raises(ConfigError, match="cannot be hooked"):
        ModelAdapter(net)


def test_fingerprint_follows_the_architecture_and_the_hash_the_weights():
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    assert architecture_fingerprint(a) == architecture_fingerprint(b)
    assert architecture_fingerprint(a) != architecture_fingerprint(nn.Linear(4, 2))
    assert weights_hash(a) != weights_hash(b)
    b.load_state_dict(a.state_dict())
    assert weights_hash(a) == weights_hash(b)
