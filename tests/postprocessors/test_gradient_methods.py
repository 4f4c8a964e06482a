"""Postprocessors that re-run the network (ODIN, MDSEns, Gram) and the layer-hook helpers, on tiny
random networks and tiny loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import image_loader
from torchvision import transforms as T

from openood_ext.features import extract_outputs
from openood_ext.networks.resnet import ResNet18_32x32
from openood_ext.networks.small_cnn import DigitsCNN
from openood_ext.postprocessors import POSTPROCESSORS
from openood_ext.postprocessors.layer_features import (LayerTaps, conv_relu_layers, input_std, resolve_layers,
                                                       stage_layers)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    torch.manual_seed(0)
    net = DigitsCNN(num_classes=3, in_channels=1, width=2).eval()
    gen = torch.Generator().manual_seed(2)
    splits = {"id_train": (torch.randn(60, 1, 8, 8, generator=gen), torch.arange(60) % 3),
              "id_val": (torch.randn(12, 1, 8, 8, generator=gen), torch.arange(12) % 3),
              "test": (torch.randn(24, 1, 8, 8, generator=gen), torch.arange(24) % 3)}
    loaders = lambda split: image_loader(*splits[split])  # noqa: E731
    outputs = {k: extract_outputs(net, loaders(k), CPU) for k in splits}
    return net, loaders, outputs


def attached(name, net, loaders, **kw):
    pp = POSTPROCESSORS.build({"name": name, **kw})
    assert pp.needs_network or pp.uses_taps
    pp.attach_network(net, CPU, loaders)
    return pp


# ----------------------------------------------------------------------------- layer helpers


def test_stage_layers_on_registered_networks():
    digits_stages = ["body.2", "body.5", "body.6", "body.9", "body.10"]
    assert stage_layers(DigitsCNN(width=2), torch.zeros(1, 1, 8, 8)) == digits_stages
    resnet = ResNet18_32x32(num_classes=3, width=2)
    assert stage_layers(resnet, torch.zeros(2, 3, 32, 32)) == ["layer1", "layer2", "layer3", "layer4", "avgpool"]
    assert resolve_layers(resnet, [0, -1], torch.zeros(1, 3, 32, 32)) == ["layer1", "avgpool"]
    assert conv_relu_layers(DigitsCNN(width=2)) == ["body.0", "body.2", "body.3", "body.5", "body.7", "body.9"]
    with pytest.raises(ValueError, match="not found"):
        resolve_layers(resnet, ["layer9"], torch.zeros(1, 3, 32, 32))


def test_layer_taps_transform_runs_before_inplace_relu():
    net = DigitsCNN(width=2).eval()
    x = torch.randn(4, 1, 8, 8)
    with LayerTaps(net, ["body.1", "body.2"], transform=lambda t: t.clone()) as taps, torch.no_grad():
        net(x)
        bn_out, relu_out = taps.pop()
    assert (bn_out < 0).any() and (relu_out >= 0).all()  # body.2 is ReLU(inplace=True) on body.1's output
    torch.testing.assert_close(bn_out.relu(), relu_out)
    # hooks are removed on exit
    net(x)
    assert taps.pop() == []


def test_input_std_from_loader_transform():
    class DS(torch.utils.data.Dataset):
        transform = T.Compose([T.ToTensor(), T.Normalize([0.5, 0.4, 0.3], [0.2, 0.25, 0.5])])

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return torch.zeros(3, 2, 2), 0

    loader = torch.utils.data.DataLoader(DS())
    torch.testing.assert_close(input_std(loader, 3), torch.tensor([0.2, 0.25, 0.5]))
    torch.testing.assert_close(input_std(loader, 3, given=0.5), torch.full((3,), 0.5))
    torch.testing.assert_close(input_std(image_loader(torch.zeros(1, 1, 2, 2), torch.zeros(1)), 1), torch.ones(1))


# ----------------------------------------------------------------------------- ODIN


def test_odin_without_perturbation_and_temperature_is_msp(digits):
    net, loaders, o = digits
    odin = attached("odin", net, loaders, temperature=1, noise=0.0)
    msp = POSTPROCESSORS.build("msp").score(o["test"])
    np.testing.assert_allclose(odin.score_loader(loaders("test")), msp, rtol=1e-5)


def test_odin_step_matches_manual_gradient_sign(digits):
    net, loaders, _ = digits
    x, _ = next(iter(loaders("test")))[:2]
    t, eps, std = 10.0, 0.01, 0.5
    xr = x.clone().requires_grad_(True)
    logits = net(xr)
    loss = torch.nn.functional.cross_entropy(logits / t, logits.argmax(1))
    loss.backward()
    step = torch.where(xr.grad >= 0, 1.0, -1.0) / std
    with torch.no_grad():
        manual = (net(x - eps * step).double() / t).softmax(1).max(1).values
        plain = (net(x).double() / t).softmax(1).max(1).values
    odin = attached("odin", net, loaders, temperature=t, noise=eps, input_std=std)
    conf = odin.score_loader(image_loader(x, torch.zeros(len(x))))
    np.testing.assert_allclose(conf, manual.numpy(), rtol=1e-6)
    assert (conf > plain.numpy()).mean() > 0.8  # the step raises the tempered max-softmax


# ----------------------------------------------------------------------------- MDSEns


def test_mds_ensemble_on_pooled_layer_without_noise_is_half_mds(digits):
    net, loaders, o = digits
    mds = POSTPROCESSORS.build("mds").fit(o["id_train"]).score(o["test"])
    for layers in ([-1], ["body.10"]):  # the global pool = the penultimate features
        ens = attached("mds_ensemble", net, loaders, noise=0.0, layers=layers).fit(o["id_train"])
        np.testing.assert_allclose(ens.score_loader(loaders("test")), 0.5 * mds, rtol=1e-5, atol=1e-6)


def test_mds_ensemble_noise_moves_towards_the_class_mean_and_layers_add(digits):
    net, loaders, o = digits
    clean = attached("mds_ensemble", net, loaders, noise=0.0, layers=[0]).fit(o["id_train"])
    noisy = attached("mds_ensemble", net, loaders, noise=0.002, layers=[0]).fit(o["id_train"])
    c, n = clean.score_loader(loaders("test")), noisy.score_loader(loaders("test"))
    assert (n > c).mean() > 0.8
    # two layers with weights (1, 2): the weighted sum of the single-layer scores
    both = attached("mds_ensemble", net, loaders, noise=0.0, layers=[0, 3], alpha=[1.0, 2.0]).fit(o["id_train"])
    third = attached("mds_ensemble", net, loaders, noise=0.0, layers=[3]).fit(o["id_train"])
    np.testing.assert_allclose(both.score_loader(loaders("test")),
                               c + 2.0 * third.score_loader(loaders("test")), rtol=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        attached("mds_ensemble", net, loaders, layers=[0, 1], alpha=[1.0]).fit(o["id_train"])


# ----------------------------------------------------------------------------- Gram


def test_gram_is_zero_on_fitted_training_samples(digits):
    net, loaders, o = digits
    gram = attached("gram", net, loaders).fit(o["id_train"])
    assert gram.layer_names == conv_relu_layers(net)
    conf = gram.score_loader(loaders("id_train"))
    labels = o["id_train"].labels
    fitted = ~gram._holdout_mask(labels) & (o["id_train"].preds == labels)
    assert fitted.sum() > 10
    np.testing.assert_array_equal(conf[fitted.numpy()], 0.0)  # inside their class's min/max everywhere
    test = gram.score_loader(loaders("test"))
    assert np.isfinite(test).all() and (test <= 0).all() and (test < 0).any()


def test_gram_runs_on_a_resnet_with_stage_layers():
    torch.manual_seed(0)
    net = ResNet18_32x32(num_classes=2, width=2).eval()
    x, y = torch.randn(20, 3, 32, 32), torch.arange(20) % 2
    loaders = lambda split: image_loader(x, y, batch_size=8)  # noqa: E731
    train = extract_outputs(net, loaders("id_train"), CPU)
    gram = attached("gram", net, loaders, layers="stages", powers=[1, 2]).fit(train)
    assert gram.layer_names == ["layer1", "layer2", "layer3", "layer4", "avgpool"]
    conf = gram.score_loader(loaders("id_train"))
    assert conf.shape == (20,) and np.isfinite(conf).all()
