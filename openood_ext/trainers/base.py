"""Supervised cross-entropy training (OpenOOD's ``base`` trainer)."""

from __future__ import annotations

import torch.nn.functional as F

from .registry import TRAINERS
from .trainer import Trainer


@TRAINERS.register("base", aliases=["supervised"])
class CrossEntropyTrainer(Trainer):
    """Cross-entropy on the ID labels; logs the loss and the training accuracy.

    OpenOOD v1.5's CIFAR recipe (``configs/trainers/base_cifar10.yml``): SGD 0.1 with Nesterov momentum
    0.9, weight decay 5e-4, batch 128, per-step cosine schedule, 100 epochs.
    """

    def training_step(self, batch):
        logits = self.net(batch.images)
        return {"loss": F.cross_entropy(logits, batch.labels),
                "acc": (logits.detach().argmax(1) == batch.labels).float().mean()}
