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


@pytest.mark.parametrize("config, epochs, milestones, seeds, net", [
    ("ad_cifar100_eoe_hsc.yml", 200, [100, 150], 10, "eoe_cnn32"),   # train_cifar.py with --dataset cifar100
    ("ad_mvtec_eoe_hsc.yml", 30, [20, 25], 2, "eoe_resnet224"),      # train_mvtec.py
])
def test_settings_without_data_here_load_and_validate(config, epochs, milestones, seeds, net, tmp_path, monkeypatch):
    """The CIFAR-100 and MVTec-AD recipes load with EOE's settings and pass run validation without their
    data (CIFAR-100's lists are read when the run starts; MVTec's tree is looked at by validation, which
    then names the missing folder in one line)."""
    from openood_ext.errors import DataError
    from openood_ext.pipelines.validation import validate_run

    monkeypatch.setenv("OPENOOD_EXT_DATA", str(tmp_path))
    cfg = load_config([f"configs/experiments/eoe/{config}"])
    tr = to_plain(cfg.trainer)
    assert tr["name"] == "eoe_hsc" and tr["epochs"] == epochs and tr["batch_size"] == 128
    assert tr["optimizer"] == {"name": "adam", "lr": 1e-3, "weight_decay": 0.0}
    assert tr["scheduler"] == {"name": "multistep", "milestones": milestones, "gamma": 0.1, "interval": "epoch"}
    assert cfg.ad.seeds == seeds and cfg.network.name == net
    assert cfg.benchmark.preprocessor.normalize == ("gcn_min_max" if "mvtec" in config else "normal_class")
    if "mvtec" in config:
        with pytest.raises(DataError, match="mvtec_anomaly_detection"):
            validate_run(cfg)
    else:
        validate_run(cfg)
        assert cfg.benchmark.groups == "superclass" and cfg.benchmark.merge_val_into == "test"
