"""EOE configs: each pipeline config loads with EOE's settings and builds its network and trainer."""

import pytest
import torch

from openood_ext.config import load_config, to_plain
from openood_ext.networks import NETWORKS
from openood_ext.trainers import TRAINERS, split_trainer_config


@pytest.mark.parametrize("obj", ["hsc", "bce", "focal", "dsad", "dsvdd"])
def test_cifar10_eoe_config(obj):
    cfg = load_config([f"configs/experiments/eoe/ad_cifar10_eoe_{obj}.yml"])
    tr = to_plain(cfg.trainer)
    assert tr["name"] == f"eoe_{obj}" and tr["epochs"] == 200 and tr["batch_size"] == 128
    assert tr["optimizer"] == {"name": "adam", "lr": 1e-3, "weight_decay": 0.0}
    assert tr["scheduler"]["milestones"] == [100, 150]
    assert ("outliers" in tr) == (obj != "dsvdd")
    assert cfg.ad.seeds == 10  # EOE's train_cifar.py: iterations=10
    assert cfg.benchmark.merge_val_into == "test"  # the full 10,000-image test split
    net = NETWORKS.build(to_plain(cfg.network))
    assert net.clf == (obj in ("bce", "focal"))
    settings, kwargs = split_trainer_config(tr)
    assert settings.epochs == 200
    TRAINERS.get(tr["name"])(**{k: v for k, v in kwargs.items() if k != "name"})
    assert net(torch.randn(2, 3, 32, 32)).shape[1] == (1 if net.clf else 256)


def test_published_recipes_of_the_sweeps_and_clip():
    """multiscale as EOE's README runs it, CLIP with its own PIL preprocessing, and the reduced CPU config
    that repeats the documented check (9,000-image list, 128 OE images in every step)."""
    ms = to_plain(load_config(["configs/experiments/eoe/ad_cifar10_eoe_multiscale.yml"]))
    assert ms["ad_sweep"]["magnitudes"] == [0, 1, 2, 4, 8, 12, 14, 15] and ms["trainer"]["outliers"]["limit"] == 16
    assert ms["trainer"]["epochs"] == 100 and ms["ad"]["seeds"] == 2
    for name in ("clip_oe", "clip_zero_shot"):
        assert load_config([f"configs/experiments/eoe/ad_cifar10_eoe_{name}.yml"]).network.preprocessing == "pil"
    cpu = to_plain(load_config(["configs/experiments/eoe/ad_cifar10_eoe_oe_limits_cpu.yml"]))
    assert cpu["benchmark"]["merge_val_into"] is None and cpu["trainer"]["outliers"]["batch_size"] == 128
    assert cpu["ad"]["seeds"] == 2 and cpu["ad"]["classes"] == [0, 1, 2] and cpu["trainer"]["epochs"] == 5
    assert load_config(["configs/experiments/eoe/ad_fmnist_eoe_hsc.yml"]).benchmark.merge_val_into == "train"
