"""VMDLS against values produced by the published code (BGU-CS-VIL/vmdls @ 5add9e2), without the checkout.

``tests/trainers/golden/vmdls_published.pt`` is written by ``python scripts/parity/vmdls.py --published PATH
--golden tests/trainers/golden/vmdls_published.pt``: the published modules' outputs for weights that
``fill_deterministic`` (in that script) sets from a seed, per module type in forward order, so this test
rebuilds the same weights in our modules.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from openood_ext.networks import NETWORKS
from openood_ext.trainers import TRAINERS, Batch, TrainContext
from parity_helpers import parity_script

GOLDEN = torch.load(Path(__file__).parent / "golden" / "vmdls_published.pt", weights_only=False)
fill = parity_script("vmdls").fill_deterministic


def test_mnist_conv_encoder_matches_the_published_outputs():
    g = GOLDEN["mnist_conv"]
    net = NETWORKS.build({"name": "vmdls", "encoder": "mnist_conv", "num_classes": 10, "latent_dim": 32}).eval()
    fill(net.encoder, g["weights_seed"])
    with torch.no_grad():
        pooled, out = net.encoder(g["x"])
    torch.testing.assert_close(out, g["out"], rtol=0, atol=1e-5)
    for ours, theirs in zip(pooled, g["pooled"]):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_mnist_autoencoder_matches_the_published_reconstruction():
    g = GOLDEN["mnist_ae"]
    ae = fill(NETWORKS.build({"name": "ae_mnist_conv"}).eval(), g["weights_seed"])
    with torch.no_grad():
        torch.testing.assert_close(ae.reconstruct(g["x"]), g["out"], rtol=0, atol=1e-5)


def test_wrn_mc_dropout_ensemble_matches_the_published_five_draws():
    g = GOLDEN["wrn_draws"]
    net = NETWORKS.build({"name": "vmdls", "encoder": "wide_resnet", "in_channels": 3, "num_classes": 3,
                          "latent_dim": 4, "encoder_args": {"depth": 10, "widen": 1, "dropout": 0.3,
                                                            "mc_dropout": True}}).eval()
    fill(net.encoder, g["weights_seed"])
    fill(net.fc_mu, g["head_seed"])
    with torch.no_grad():
        torch.manual_seed(g["draw_seed"])
        torch.testing.assert_close(net.ensemble(g["x"]), g["ensemble"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("epoch", [0, 3])
def test_training_loss_and_margin_schedule_match_the_published_step(epoch):
    g = GOLDEN["loss"]
    net = fill(NETWORKS.build({"name": "vmdls", "encoder": "mnist_conv", "num_classes": 10, "latent_dim": 32}),
               g["weights_seed"])
    trainer = TRAINERS.get("vmdls")(batch_classes=4, sample_count=3, margins_epoch=1)
    trainer.setup(net, TrainContext(device=torch.device("cpu"), num_classes=10, epochs=1, steps_per_epoch=1))
    trainer.stats.means.copy_(g["class_means"])
    for e in range(epoch + 1):
        trainer.on_epoch_start(e)
        assert trainer.neg_margin == pytest.approx(g["margins"][e])
    torch.manual_seed(g["draw_seed"])
    out = trainer.training_step(Batch(g["x"], g["y"], None, epoch, 0, 0))
    assert float(out["loss"].detach()) == pytest.approx(g[epoch], rel=1e-5)  # float32 sums of ~3e4
