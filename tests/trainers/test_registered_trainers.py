"""Every registered trainer, built from its default config plus the few overrides below, is set up on a tiny network
the way the engine does it (``setup`` with a TrainContext, ``on_epoch_start(0)``) and runs ``training_step`` on a
tiny batch: the loss is a finite scalar and its gradient reaches the parameters the trainer optimises
(``parameter_groups`` and the trainable modules it added to the context). One test id per trainer."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from conftest import toy_benchmark, write_class_set

from openood_ext.datasets import BENCHMARKS
from openood_ext.networks import NETWORKS
from openood_ext.synthesizers import SYNTHESIZERS, SourceContext
from openood_ext.trainers import TRAINERS, Batch, TrainContext
from sweep_helpers import TINY_SD, builtin_names, tiny_sd_root

PRE = {"image_size": 28, "resize": 28, "channels": 1, "mean": [0.5], "std": [0.5], "train_augment": []}
DIGITS = {"name": "digits_cnn", "num_classes": 3, "in_channels": 1, "width": 4}


def _clip(env):
    return {"class_names": ["zero", "one", "two"]}  # the toy benchmark names no classes


def _oaml(env):
    """A tiny frozen ViT teacher checkpoint (as in test_oaml.py) and tiny CLUB heads."""
    path = env["tmp"] / "teacher.bin"
    if not path.exists():
        vit = {"model": "vit_tiny_patch16_224", "img_size": 8, "patch_size": 4, "embed_dim": 16, "depth": 1,
               "num_heads": 2}
        net = NETWORKS.build({"name": "timm_vit", "num_classes": 3, **vit})
        torch.save({("vit." + k if not k.startswith("fc.") else k): v
                    for k, v in ((k.removeprefix("vit."), v) for k, v in net.state_dict().items())}, path)
    teacher = {"model": "vit_tiny_patch16_224", "img_size": 8, "patch_size": 4, "embed_dim": 16, "depth": 1,
               "num_heads": 2, "checkpoint": str(path)}
    return {"teacher": teacher, "club_hidden": 8, "latent_mu_hidden": [16], "latent_logvar_hidden": [8]}


# name -> dict with: cfg (overrides, or a function of the module's env giving them), net (network spec),
# shape (one image [C, H, W], or [V, C, H, W] for multi-view trainers), outliers (an image batch for
# batch.outliers), source (a ctx.outliers feature source: "npos" or "sd_text"), warmup (steps before the checked
# one, e.g. to fill a queue), classes (ctx.num_classes and label range)
SPECS = {
    "ae": dict(net={"name": "ae_cnn28"}),
    "autoencoder": dict(net={"name": "ae_mnist_conv", "latent_dim": 8}),
    "base": dict(net=DIGITS),
    "energy_oe": dict(net=DIGITS, outliers=True),
    "eoe_bce": dict(net={"name": "eoe_cnn28", "rep_dim": 8, "clf": True}, outliers=True),
    "eoe_clip": dict(cfg=_clip, net={"name": "clip", "model": "tiny-random"}, outliers=True),
    "eoe_clip_zero_shot": dict(cfg=_clip, net={"name": "clip", "model": "tiny-random"}),
    "eoe_dsad": dict(net={"name": "eoe_cnn28", "rep_dim": 8}, outliers=True),
    "eoe_dsvdd": dict(net={"name": "eoe_cnn28", "rep_dim": 8}),  # its centre comes from the benchmark's id_train
    "eoe_focal": dict(net={"name": "eoe_cnn28", "rep_dim": 8, "clf": True}, outliers=True),
    "eoe_hsc": dict(net={"name": "eoe_cnn28", "rep_dim": 8}, outliers=True),
    "fcdd": dict(net={"name": "fcdd_cnn28"}, outliers=True),
    "hsc": dict(net={"name": "hsc_cnn28", "rep_dim": 8}, outliers=True),
    "logitnorm": dict(net=DIGITS),
    "npos": dict(cfg={"prototype_init": "batch"},
                 net={"name": "npos_net", "backbone": "digits_cnn", "num_classes": 3, "in_channels": 1, "width": 4,
                      "head_dim": 8, "mlp_hidden": 8},
                 shape=(2, 1, 8, 8), source="npos", warmup=3),
    "oaml": dict(cfg=_oaml, net={"name": "digits_cnn", "num_classes": 3, "in_channels": 3, "width": 4},
                 shape=(3, 8, 8), source="sd_text"),
    "oe": dict(net=DIGITS, outliers=True),
    "vmdls": dict(cfg={"batch_classes": 3, "sample_count": 2},
                  net={"name": "vmdls", "num_classes": 3, "image_size": 8, "latent_dim": 4}, shape=(1, 8, 8)),
}
B = 6


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny one-channel 28x28 AD benchmark (normal class 0, with its splits) and a scratch folder."""
    root = tmp_path_factory.mktemp("trainer_sweep_data")
    write_class_set(root, "band", (("train", 4), ("val", 2), ("test", 2)), np.random.default_rng(0))
    bench = BENCHMARKS.build(toy_benchmark(root, "mnist", PRE))
    return {"bench": bench, "tmp": root, "factory": tmp_path_factory}


def _source(kind, env, classes):
    if kind == "npos":
        src = SYNTHESIZERS.build({"name": "npos", "queue_size": 12, "K": 4, "select": 4, "pick": 2, "candidates": 10,
                                  "keep": 3, "start_epoch": 0, "num_classes": classes, "backend": "torch"})
        src.setup(SourceContext(None, torch.device("cpu"), 0, 8, 6))
        return src
    if kind == "sd_text":
        root = tiny_sd_root(env["factory"])
        src = SYNTHESIZERS.build({"name": "sd_text_outliers", "root": str(root), "generate": False, **TINY_SD})
        src.setup(SourceContext(None, torch.device("cpu"), 0, 4, 2))
        src.check()
        return src
    return None


@pytest.mark.parametrize("name", builtin_names(TRAINERS))
def test_registered_trainer_step(name, env, device):
    assert name in SPECS, f"trainer {name!r} is registered but has no entry in SPECS (add its tiny setup)"
    spec = SPECS[name]
    cfg = spec.get("cfg", {})
    cfg = cfg(env) if callable(cfg) else cfg
    classes = spec.get("classes", 3)
    torch.manual_seed(0)
    trainer = TRAINERS.build({"name": name, **cfg})
    net = NETWORKS.build(spec["net"]).train().to(device)
    source = _source(spec.get("source"), env, classes)
    ctx = TrainContext(device=device, num_classes=classes, epochs=1, steps_per_epoch=1, seed=0,
                       benchmark=env["bench"], outliers=source)
    trainer.setup(net, ctx)
    trainer.on_epoch_start(0)
    shape = spec.get("shape", (1, 28, 28))
    g = torch.Generator().manual_seed(1)
    labels = (torch.arange(B) % classes).to(device)
    images = torch.randn(B, *shape, generator=g).to(device)
    if trainer.needs_outliers == "images":
        assert spec.get("outliers"), f"{name} needs outlier images: mark it outliers=True in SPECS"
    outliers = (torch.rand(B, *shape, generator=g) * 2 - 1).to(device) if spec.get("outliers") else None
    for step in range(spec.get("warmup", 0)):
        trainer.training_step(Batch(images, labels, outliers, 0, step, step))

    params = [p for group in trainer.parameter_groups() for p in group["params"]]
    params += [p for m in ctx.modules.values() if m.trainable for p in m.module.parameters()]
    assert params, f"{name} optimises no parameters"
    for p in params:
        p.grad = None
    step = spec.get("warmup", 0)
    terms = trainer.training_step(Batch(images, labels, outliers, 0, step, step))
    loss = terms["loss"]
    assert torch.is_tensor(loss) and loss.dim() == 0 and torch.isfinite(loss), (name, loss)
    for key, value in terms.items():
        value = torch.as_tensor(value)
        assert torch.isfinite(value.float()).all(), (name, key, value)
    if getattr(trainer, "trains", True):
        loss.backward()
        reached = [p for p in params if p.grad is not None and p.grad.abs().sum() > 0]
        assert reached, f"{name}: the loss's gradient reaches none of the optimised parameters"
        assert all(torch.isfinite(p.grad).all() for p in reached)
        net_params = {id(p) for p in net.parameters()}
        assert any(id(p) in net_params for p in reached), f"{name}: no gradient reaches the network"


# ---------------------------------------------------------------------------------------------- host syncs
#: host reads a step may make: NPOS's prototype EMA reads its number of sequential steps (the largest class
#: count in the batch); every other trainer none
SYNC_BUDGET = {"npos": 1}


@pytest.mark.parametrize("name", builtin_names(TRAINERS))
def test_registered_trainer_step_does_not_wait_for_the_device(name, env):
    """A training step (and its backward) reads no device value on the host beyond its budget: each such read
    (item, bool, nonzero, boolean-mask indexing, .cpu(), ...) stalls a GPU run once per step. Counted on the
    CPU by patching those operations (sync_helpers); checks queued with device_check do not count."""
    from sync_helpers import count_host_syncs
    spec = SPECS[name]
    cfg = spec.get("cfg", {})
    cfg = cfg(env) if callable(cfg) else cfg
    torch.manual_seed(0)
    trainer = TRAINERS.build({"name": name, **cfg})
    net = NETWORKS.build(spec["net"]).train()
    ctx = TrainContext(device=torch.device("cpu"), num_classes=3, epochs=1, steps_per_epoch=1, seed=0,
                       benchmark=env["bench"], outliers=_source(spec.get("source"), env, 3))
    trainer.setup(net, ctx)
    trainer.on_epoch_start(0)
    g = torch.Generator().manual_seed(1)
    shape = spec.get("shape", (1, 28, 28))
    images, labels = torch.randn(B, *shape, generator=g), torch.arange(B) % 3
    outliers = torch.rand(B, *shape, generator=g) * 2 - 1 if spec.get("outliers") else None
    warmup = spec.get("warmup", 0) + 1  # the first step may set up lazily (queues, prototypes)
    for step in range(warmup):
        trainer.training_step(Batch(images, labels, outliers, 0, step, step))
    steps = 3
    with count_host_syncs() as syncs:
        for step in range(warmup, warmup + steps):
            terms = trainer.training_step(Batch(images, labels, outliers, 0, step, step))
            if terms["loss"].requires_grad:
                terms["loss"].backward()
    assert syncs.count <= steps * SYNC_BUDGET.get(name, 0), f"{name}: {syncs.count} host reads in {steps} steps: " \
                                                            f"{dict(syncs.where)}"
