"""The engine reads the device on the host only every ``finite_check_every`` optimizer steps and at the end of
an epoch (the NaN/inf verdict of the loss, kept on the device in between), and still names the first
non-finite batch and keeps the last good training state. On CUDA the count comes from torch's own
synchronisation debug mode; on the CPU from patching the operations that read device values (sync_helpers)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from openood_ext.trainers import Engine, Trainer, TrainingError, split_trainer_config
from sync_helpers import count_host_syncs


def loader(n=64, batch_size=8, dim=5, classes=3):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, dim, generator=g), torch.randint(0, classes, (n,), generator=g)
    return torch.utils.data.DataLoader(list(zip(x, y)), batch_size=batch_size, shuffle=False)


def settings(**kw):
    spec = {"name": "x", "epochs": 2, "batch_size": 8, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
            "scheduler": {"name": "constant"}, **kw}
    return split_trainer_config(spec)[0]


class PlainCE(Trainer):
    def training_step(self, batch):
        return {"loss": F.cross_entropy(self.net(batch.images), batch.labels)}


class Explodes(PlainCE):
    def training_step(self, batch):
        terms = super().training_step(batch)
        if batch.epoch == 1 and batch.index == 2:
            terms["penalty"] = torch.tensor(float("inf"), device=terms["loss"].device)
            terms["loss"] = terms["loss"] + terms["penalty"]
        return terms


def count_epoch_syncs(engine, device) -> int:
    """Host synchronisations during one epoch's steps (the epoch-end means excluded)."""
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                engine.run_epoch(0)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)
    with count_host_syncs() as syncs:
        engine.run_epoch(0)
    return syncs.count


def test_a_step_reads_the_device_only_when_the_check_is_due(device):
    every, steps = 4, 8
    engine = Engine(PlainCE(), nn.Linear(5, 3), loader(), settings(finite_check_every=every), device=device,
                    num_classes=3)
    syncs = count_epoch_syncs(engine, device)
    # due checks + the epoch-end check + the epoch means of the logged terms (loss): one per term
    assert syncs <= steps // every + 1 + 1, syncs


def test_every_step_is_checked_by_default_on_the_cpu_and_every_50_on_a_gpu(device):
    engine = Engine(PlainCE(), nn.Linear(5, 3), loader(), settings(), device=device, num_classes=3)
    assert engine.finite.every == (50 if device.type == "cuda" else 1)


@pytest.mark.parametrize("every", [1, 3, 100])
def test_the_first_non_finite_batch_is_named_and_the_last_good_state_kept(every, tmp_path, device):
    state = tmp_path / "last.pt"
    with pytest.raises(TrainingError, match=r"epoch 2, batch 3: loss term 'penalty' is inf; the last good "
                                            r"training state \(after epoch 1\)"):
        Engine(Explodes(), nn.Linear(5, 3), loader(), settings(finite_check_every=every), device=device,
               num_classes=3, state_path=state).fit()
    assert torch.load(state, weights_only=False)["epoch"] == 1


def test_bf16_and_channels_last_train_on_the_device(device):
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    g = torch.Generator().manual_seed(0)
    data = list(zip(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)))
    images = torch.utils.data.DataLoader(data, batch_size=8)
    history = Engine(PlainCE(), net, images, settings(epochs=1, precision="bf16", channels_last=True),
                     device=device, num_classes=3).fit()
    assert math.isfinite(history[0]["loss"])
    if device.type == "cuda":
        assert torch.backends.cudnn.benchmark  # cudnn_benchmark: true (default) on CUDA
