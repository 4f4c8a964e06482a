"""Every built-in training recipe on small images trains through the decoded cache and batched
augmentation by default (``data.backend: auto``); the large-image recipes keep per-image decoding for
a reason the run log names. Checked from the configs alone (no data needed)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from openood_ext.config import load_config, to_plain
from openood_ext.synthesizers import OUTLIER_SOURCES
from openood_ext.trainers import TRAINERS, split_trainer_config
from openood_ext.trainers.data import tensor_backend_obstacle

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# large images (224 px crops of ImageNet-30 / MVTec-AD): per-image decoding by design
PER_IMAGE = {
    "eoe/ad_imagenet30_eoe_bce.yml": "train_crop: random",
    "eoe/ad_imagenet30_eoe_hsc.yml": "train_crop: random",
    "eoe/ad_mvtec_eoe_hsc.yml": "train_crop: random",
    "fcdd/ad_imagenet30_fcdd.yml": "train_crop: random",
    "fcdd/ad_mvtec_fcdd.yml": "epoch_repeats",
    "fcdd/ad_mvtec_fcdd_semi.yml": "epoch_repeats",
}
# a user-supplied encoder checkpoint is required before the trainer builds
NEEDS_USER_INPUT = {"vmdls/test_ood_vmdls_cifar100_densenet_finetune.yml", "vmdls/test_ood_vmdls_cifar10_wrn_finetune.yml"}

EXPERIMENTS = sorted(str(p.relative_to(CONFIGS / "experiments")) for p in (CONFIGS / "experiments").rglob("*.yml"))
# OpenOOD's CIFAR-10 recipe with each of its trainer variants (OE, energy OE, LogitNorm)
OPENOOD_VARIANTS = ["oe_cifar10.yml", "energy_oe_cifar10.yml", "logitnorm_cifar10.yml"]


def obstacle(cfg) -> str | None:
    settings, method = split_trainer_config(to_plain(cfg.trainer))
    trainer = TRAINERS.build(method)
    source = OUTLIER_SOURCES.build(dict(settings.outliers)) if settings.outliers else None
    bench = SimpleNamespace(preprocessor=to_plain(cfg.benchmark.preprocessor))
    return tensor_backend_obstacle(bench, trainer, source)


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n not in NEEDS_USER_INPUT])
def test_training_recipes_take_the_tensor_path_unless_their_images_are_large(name):
    cfg = load_config([str(CONFIGS / "experiments" / name)])
    if cfg.get("trainer") is None:
        pytest.skip("no training in this config")
    reason = obstacle(cfg)
    if name in PER_IMAGE:
        assert reason is not None and PER_IMAGE[name] in reason
    else:
        assert reason is None, f"{name}: {reason}"


@pytest.mark.parametrize("variant", OPENOOD_VARIANTS)
def test_openood_trainer_variants_take_the_tensor_path(variant):
    cfg = load_config([str(CONFIGS / "experiments/openood/train_cifar10.yml")])
    cfg.trainer = load_config([str(CONFIGS / "trainers" / variant)]).trainer
    assert cfg.trainer.name in {"oe", "energy_oe", "logitnorm"}
    assert obstacle(cfg) is None
