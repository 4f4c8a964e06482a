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
    net = NETWORKS.build(to_plain(cfg.network))
    assert net.clf == (obj in ("bce", "focal"))
    settings, kwargs = split_trainer_config(tr)
    assert settings.epochs == 200
    TRAINERS.get(tr["name"])(**{k: v for k, v in kwargs.items() if k != "name"})
    assert net(torch.randn(2, 3, 32, 32)).shape[1] == (1 if net.clf else 256)
