"""VMDLS latent: what the metric loss sees (``metric_on``), why sampled z fails at small |mu| on normalised
distances, and the trainer/network distance agreement."""

from __future__ import annotations

import pytest
import torch

from openood_ext.errors import ConfigError
from openood_ext.networks import NETWORKS
from openood_ext.trainers import TRAINERS, Batch, TrainContext
from openood_ext.trainers.vmdls_losses import triplet_distancing_loss


def _step(metric_on: str, seed: int, distance: str = "normalized"):
    torch.manual_seed(0)
    net = NETWORKS.build({"name": "vmdls", "num_classes": 2, "image_size": 8, "latent_dim": 4, "distance": distance})
    trainer = TRAINERS.get("vmdls")(batch_classes=2, sample_count=3, metric_on=metric_on, distance=distance)
    trainer.setup(net, TrainContext(device=torch.device("cpu"), num_classes=2, epochs=1, steps_per_epoch=1))
    trainer.on_epoch_start(0)
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 0, 0, 1, 1, 1])
    with torch.no_grad():
        mu, logvar = net.encode(x)
    torch.manual_seed(seed)
    eps = torch.randn_like(mu)  # the draw training_step makes right after this seed
    torch.manual_seed(seed)
    out = trainer.training_step(Batch(x, y, None, 0, 0, 0))
    return out, mu, mu + torch.exp(0.5 * logvar) * eps, y


def test_metric_on_mu_uses_the_mean_and_z_uses_the_sample():
    out_mu1, mu, _, y = _step("mu", seed=1)
    out_mu2, _, _, _ = _step("mu", seed=2)
    expected = triplet_distancing_loss(mu, y, 0.1, 1.15, "normalized")["loss"]
    assert out_mu1["metric"] == pytest.approx(expected.item(), abs=1e-6)
    assert out_mu1["metric"] == out_mu2["metric"]                 # no noise in the metric term
    assert out_mu1["kl"] != out_mu2["kl"]                         # the KL still uses the sample
    out_z, _, z, y = _step("z", seed=1)
    assert out_z["metric"] == pytest.approx(triplet_distancing_loss(z, y, 0.1, 1.15)["loss"].item(), abs=1e-6)
    assert out_z["metric"] != _step("z", seed=2)[0]["metric"]


def test_sample_noise_swamps_small_means_on_normalised_distances():
    """The failure seen on the Fashion-MNIST subset, in numbers: two classes whose means point in opposite
    directions (perfectly separated on mu) but with |mu| = 0.2, sigma = prior_std = 0.1, 32 dims. On sampled z
    most in-batch triplets are violated; on mu none is. With |mu| = 5 the sample is harmless."""
    g = torch.Generator().manual_seed(0)
    d, n = 32, 20
    direction = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    y = torch.arange(2 * n) % 2
    for norm, violated_on_z in ((0.2, lambda f: f > 0.3), (5.0, lambda f: f < 0.01)):
        mu = (1 - 2 * y[:, None].float()) * norm * direction
        z = mu + 0.1 * torch.randn(2 * n, d, generator=g)
        frac_z = triplet_distancing_loss(z, y, 0.1, 0.0)["active"].item()
        assert violated_on_z(frac_z), (norm, frac_z)
        assert triplet_distancing_loss(mu, y, 0.1, 0.0)["active"].item() == 0.0


def test_distance_and_metric_on_bad_input():
    with pytest.raises(ConfigError, match="'metric_on': expected one of 'z', 'mu'"):
        TRAINERS.build({"name": "vmdls", "metric_on": "sample"})
    net = NETWORKS.build({"name": "vmdls", "num_classes": 2, "image_size": 8, "latent_dim": 4})  # normalized
    trainer = TRAINERS.get("vmdls")(distance="euclidean")
    with pytest.raises(ConfigError, match="trainer.distance is 'euclidean' but network.distance is 'normalized'"):
        trainer.setup(net, TrainContext(device=torch.device("cpu"), num_classes=2, epochs=1, steps_per_epoch=1))
    _step("z", 0, distance="euclidean")  # agreeing settings are accepted


# ---------------------------------------------------------------- fine-tuning
def _engine(tmp_path, epochs, **method):
    from openood_ext.trainers import Engine, split_trainer_config
    torch.manual_seed(0)
    images, labels = torch.randn(24, 1, 8, 8), torch.arange(24) % 2
    settings, kw = split_trainer_config({"name": "vmdls", "epochs": epochs, "optimizer": {"name": "sgd", "lr": 0.1},
                                         "scheduler": "constant", "batch_classes": 2, "sample_count": 4, **method})
    kw.pop("name")
    trainer = TRAINERS.get("vmdls")(**kw)
    net = NETWORKS.build({"name": "vmdls", "num_classes": 2, "image_size": 8, "latent_dim": 4})
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels),
                                         batch_sampler=trainer.batch_sampler(labels, 8, 0))
    return Engine(trainer, net, loader, settings, num_classes=2, state_path=tmp_path / f"s{epochs}.pt"), net


def test_finetune_loads_the_encoder_freezes_it_then_trains_it(tmp_path):
    from openood_ext.networks.checkpoint import save_checkpoint
    torch.manual_seed(1)
    source = NETWORKS.build({"name": "vmdls", "num_classes": 2, "image_size": 8, "latent_dim": 4})
    save_checkpoint(tmp_path / "pre.pt", source, {"name": "vmdls"})
    torch.save(source.encoder.state_dict(), tmp_path / "enc.pt")
    for weights in ("pre.pt", "enc.pt"):
        engine, net = _engine(tmp_path, 1, init_weights=str(tmp_path / weights), freeze_encoder_epochs=1, head_lr=0.5)
        assert all(torch.equal(a, b) for a, b in zip(net.encoder.state_dict().values(),
                                                     source.encoder.state_dict().values()))
        assert not torch.equal(net.fc_mu.weight, source.fc_mu.weight)  # heads are not loaded
        assert [g["lr"] for g in engine.optimizer.param_groups] == [0.1, 0.5]
        head0 = net.fc_mu.weight.detach().clone()
        engine.fit()
        assert all(torch.equal(a, b) for a, b in zip(net.encoder.state_dict().values(),
                                                     source.encoder.state_dict().values()))  # frozen epoch
        assert not torch.equal(net.fc_mu.weight, head0)
    engine, net = _engine(tmp_path, 2, init_weights=str(tmp_path / "enc.pt"), freeze_encoder_epochs=1)
    engine.fit()
    assert not torch.equal(net.encoder.conv1.weight, source.encoder.conv1.weight)  # unfrozen in epoch 2


def test_finetune_bad_weights_are_one_line_errors(tmp_path):
    from openood_ext.errors import CheckpointError
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "bad.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    for name, match in (("bad.pt", "does not fit the mnist_conv encoder"), ("junk.pt", "not a readable checkpoint"),
                        ("absent.pt", "not a readable checkpoint")):
        with pytest.raises(CheckpointError, match=match) as exc:
            _engine(tmp_path, 1, init_weights=str(tmp_path / name))
        assert "\n" not in str(exc.value) and name in str(exc.value)
