"""VMDLS's vgg / densenet (BC-100, growth 12) / wide_resnet (28-10) encoders: shapes of the layer ensemble
(the spec's dimensions 1696 / 974 / 1792 at latent 32), the published quirks behind their switches, and the
one-line config errors. The full-size networks are built once each and run on a batch of 2."""

import math

import pytest
import torch

from openood_ext.errors import ConfigError
from openood_ext.networks import NETWORKS
from openood_ext.networks.vmdls_backbones import DenseNetEncoder, VGGEncoder, WideResNetEncoder

FULL = [  # encoder, extra network args, pooled dims, encoder output dim, ensemble dim (spec section 4)
    ("vgg", {"image_size": 32}, (128, 256, 256), 1024, 1696),
    ("densenet", {}, (108, 150, 342), 342, 974),
    ("wide_resnet", {}, (160, 320, 640), 640, 1792),
]


@pytest.mark.parametrize("encoder,extra,pooled_dims,out_dim,ensemble_dim", FULL)
def test_full_size_shapes(encoder, extra, pooled_dims, out_dim, ensemble_dim):
    torch.manual_seed(0)
    net = NETWORKS.build({"name": "vmdls", "encoder": encoder, "num_classes": 10, "in_channels": 3,
                          "latent_dim": 32, **extra}).eval()
    assert net.encoder.pooled_dims == pooled_dims and net.encoder.out_dim == out_dim
    assert net.ensemble_dim == ensemble_dim
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pooled, out = net.encoder(x)
        ens = net.ensemble(x)
        logits, mu = net(x, return_feature=True)
        first = net.first_layer(x)
    assert [p.shape for p in pooled] == [torch.Size([2, d]) for d in pooled_dims]
    assert out.shape == (2, out_dim) and ens.shape == (2, ensemble_dim)
    assert logits.shape == (2, 10) and mu.shape == (2, 32)
    assert torch.equal(first, pooled[0])
    assert torch.isfinite(ens).all()
    if encoder in ("densenet", "wide_resnet"):          # published: l3 duplicates the encoder output
        assert torch.equal(pooled[2], out)


def test_vgg_layers_are_pre_relu_and_size_checked():
    torch.manual_seed(0)
    enc = VGGEncoder(in_channels=1, image_size=8).eval()
    with torch.no_grad():
        pooled, out = enc(torch.randn(3, 1, 8, 8))
    assert [p.shape[1] for p in pooled] == [128, 256, 256] and out.shape == (3, 1024)
    assert any((p < 0).any() for p in pooled)           # BatchNorm outputs, taken before the ReLU
    assert (out >= 0).all()                             # the encoder output ends with a ReLU
    with pytest.raises(ConfigError, match="image_size"):
        VGGEncoder(image_size=28)


def test_densenet_init_switch():
    he, pub = DenseNetEncoder(depth=16, init="he"), DenseNetEncoder(depth=16, init="published")
    n = (16 - 4) // 6
    # published: every conv ~ N(0, 2/n) with n the block size; he: N(0, 2/(k*k*out_channels))
    w = torch.cat([m.weight.flatten() for m in pub.modules() if isinstance(m, torch.nn.Conv2d)])
    assert abs(w.std().item() - math.sqrt(2 / n)) < 0.05
    assert abs(he.conv1.weight.std().item() - math.sqrt(2 / (9 * he.conv1.out_channels))) < 0.03
    assert he.pooled_dims == (24, 24, 48)              # (24 + 2*12) / 2, (24 + 2*12) / 2, 24 + 2*12
    with pytest.raises(ConfigError, match="init"):
        DenseNetEncoder(init="xavier")
    with pytest.raises(ConfigError, match="depth"):
        DenseNetEncoder(depth=50)


def test_wide_resnet_switches():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    det = WideResNetEncoder(depth=10, widen=1, dropout=0.5).eval()
    with torch.no_grad():
        assert torch.equal(det(x)[1], det(x)[1])        # eval mode: dropout off
    mc = WideResNetEncoder(depth=10, widen=1, dropout=0.5, mc_dropout=True).eval()
    with torch.no_grad():
        assert not torch.equal(mc(x)[1], mc(x)[1])      # published: dropout stays on at test time
    b3 = WideResNetEncoder(depth=10, widen=1, dropout=0.0, layers="block3").eval()
    with torch.no_grad():
        pooled, out = b3(x)
    assert pooled[2].shape == out.shape == (2, 64) and not torch.equal(pooled[2], out)
    for bad in ({"layers": "last"}, {"depth": 27}, {"dropout": 1.0}, {"widen": 0}):
        with pytest.raises(ConfigError, match="network.encoder_args"):
            WideResNetEncoder(**bad)


def test_encoder_args_through_the_network():
    net = NETWORKS.build({"name": "vmdls", "encoder": "wide_resnet", "in_channels": 1, "num_classes": 3,
                          "latent_dim": 4, "encoder_args": {"depth": 10, "widen": 1, "layers": "block3"}})
    assert net.ensemble_dim == 16 + 32 + 64 + 64 + 4
    with pytest.raises(ConfigError, match="encoder_args"):
        NETWORKS.build({"name": "vmdls", "encoder": "densenet", "encoder_args": {"growth_rate": 12}})
    with pytest.raises(ConfigError, match="encoder_args"):
        NETWORKS.build({"name": "vmdls", "encoder": "mnist_conv", "encoder_args": {"depth": 10}})
    with pytest.raises(ConfigError, match="network.encoder"):
        NETWORKS.build({"name": "vmdls", "encoder": "resnet50"})


def _wrn_net(**encoder_args):
    torch.manual_seed(0)
    return NETWORKS.build({"name": "vmdls", "encoder": "wide_resnet", "in_channels": 3, "num_classes": 3,
                           "latent_dim": 4, "encoder_args": {"depth": 10, "widen": 1, "dropout": 0.3,
                                                             **encoder_args}}).eval()


def test_mc_dropout_ensemble_takes_five_draws_in_the_published_order():
    # published test_step: mu = fc_mu(encoder(x)), then get_layer_output(x, i) for i = 1..4, each its own pass
    net, x = _wrn_net(mc_dropout=True), torch.randn(2, 3, 32, 32)
    assert net.separate_draws
    enc = net.encoder
    with torch.no_grad():
        torch.manual_seed(5)
        mu = net.fc_mu(enc(x)[1])
        l1 = enc.block1(enc.conv1(x)).mean(dim=(2, 3))
        l2 = enc.block2(enc.block1(enc.conv1(x))).mean(dim=(2, 3))
        l3, out = enc(x)[1], enc(x)[1]
        torch.manual_seed(5)
        got = net.ensemble(x)
    assert torch.equal(got, torch.cat([l1, l2, l3, out, mu], dim=1))
    assert not torch.equal(l3, out)          # two draws: the published duplicate l3 = out differs draw to draw


def test_shared_draws_and_deterministic_networks_use_one_pass():
    x = torch.randn(2, 3, 32, 32)
    for net in (_wrn_net(mc_dropout=True, ensemble_draws="shared"), _wrn_net(mc_dropout=False)):
        assert not net.separate_draws
        with torch.no_grad():
            torch.manual_seed(1)
            f = net.ensemble(x)
        l3, out = f[:, 16 + 32:16 + 32 + 64], f[:, 16 + 32 + 64:16 + 32 + 128]
        assert torch.equal(l3, out)           # one pass: the published layers give l3 == out
    with pytest.raises(ConfigError, match="ensemble_draws"):
        _wrn_net(ensemble_draws="five")


def test_vmdls_postprocessor_fits_on_the_separate_draws():
    # the Gaussian fit of a separate-draws network sees l3 != out (two draws), of a one-pass network l3 == out
    from openood_ext.features import extract_outputs
    from openood_ext.postprocessors import POSTPROCESSORS
    images, labels = torch.randn(12, 3, 32, 32), torch.arange(12) % 3
    for encoder_args, equal in (({"mc_dropout": True}, False), ({"mc_dropout": True, "ensemble_draws": "shared"}, True)):
        net = _wrn_net(**encoder_args)
        pp = POSTPROCESSORS.build({"name": "vmdls"})
        fit = pp.fit_taps(net)
        extract_outputs(net, [(images, labels, 0)], torch.device("cpu"), consumers=[fit])
        mean = fit.stats.s1[0] / fit.stats.n[0]
        assert torch.equal(mean[48:112], mean[112:176]) == equal
