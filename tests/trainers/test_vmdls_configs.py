"""VMDLS's README recipes as configs: the CIFAR-100 DenseNet fine-tuning command (latent 64, CIFAR-10's
Normalize constants as the code's 'cifar' transforms use them) loads and validates without its data."""

from openood_ext.config import load_config, to_plain
from openood_ext.pipelines.validation import validate_run


def test_cifar100_finetune_config_is_the_readme_command(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENOOD_EXT_DATA", str(tmp_path))
    cfg = load_config(["configs/experiments/vmdls/test_ood_vmdls_cifar100_densenet_finetune.yml"],
                      [f"trainer.init_weights={tmp_path / 'densenet.pt'}"])
    validate_run(cfg)  # no CIFAR-100 here: the lists are read when the run starts
    c = to_plain(cfg)
    # --latent_dim 64 --max_epochs 200 --step_size 64 --lr 0.001 --opt sgd --margin_max_distance 64
    # --margins_epoch 40 --batch_classes 20 --sample_count 20 --finetune_lr 0.01 --finetune
    assert c["network"]["latent_dim"] == 64 and c["network"]["encoder"] == "densenet"
    assert c["benchmark"]["num_classes"] == 100 and c["network"]["num_classes"] == 100
    tr = c["trainer"]
    assert (tr["epochs"], tr["scheduler"]["milestones"], tr["optimizer"]["lr"]) == (200, [64, 128, 192], 1e-3)
    assert (tr["batch_classes"], tr["sample_count"], tr["margin_max_distance"], tr["margins_epoch"]) == (20, 20, 64, 40)
    assert (tr["head_lr"], tr["freeze_encoder_epochs"]) == (0.01, 22)
    pre = c["benchmark"]["preprocessor"]
    assert pre["mean"] == [0.4914, 0.4822, 0.4465] and pre["std"] == [0.2023, 0.1994, 0.2010]


def test_cifar_test_configs_use_the_published_reconstruction_weight():
    """The README's CIFAR test commands pass --ae_features: the vmdls score carries the reconstruction weight
    of bolts' autoencoder (resnet18 for CIFAR-10, resnet50 for CIFAR-100); its checkpoint is read at test time."""
    for name, arch in (("test_ood_vmdls_cifar10_vgg.yml", "ae_resnet18_32x32"),
                       ("test_ood_vmdls_cifar10_densenet.yml", "ae_resnet18_32x32"),
                       ("test_ood_vmdls_cifar10_resnet18.yml", "ae_resnet18_32x32"),
                       ("test_ood_vmdls_cifar100_densenet_finetune.yml", "ae_resnet50_32x32"),
                       ("test_ood_vmdls_mnist.yml", "ae_mnist_conv")):
        cfg = load_config([f"configs/experiments/vmdls/{name}"])
        vmdls = [p for p in to_plain(cfg.postprocessors) if isinstance(p, dict) and p.get("name") == "vmdls"]
        assert vmdls and vmdls[0]["ae"]["name"] == arch and vmdls[0]["ae"]["checkpoint"], name
    # the WRN test command has no --ae_features
    wrn = load_config(["configs/experiments/vmdls/test_ood_vmdls_cifar10_wrn_finetune.yml"])
    assert "vmdls" in to_plain(wrn.postprocessors) and wrn.network.encoder_args.ensemble_draws == "separate"
