"""Supervised cross-entropy training (OpenOOD's ``base`` trainer)."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from ..utils.runtime import get_logger, progress
from .registry import TRAINERS


@TRAINERS.register("base", aliases=["supervised"])
class SupervisedTrainer:
    """Cross-entropy with SGD (Nesterov momentum) and a per-step cosine learning-rate schedule.

    Args:
        epochs: passes over the training split.
        lr, momentum, weight_decay, nesterov: SGD settings (OpenOOD defaults 0.1, 0.9, 5e-4, True).
        batch_size: training batch size (read by the pipeline when it builds the loader).
    """

    def __init__(self, epochs: int = 100, lr: float = 0.1, momentum: float = 0.9,
                 weight_decay: float = 5e-4, nesterov: bool = True, batch_size: int = 128):
        self.epochs, self.lr, self.momentum = int(epochs), float(lr), float(momentum)
        self.weight_decay, self.nesterov, self.batch_size = float(weight_decay), bool(nesterov), int(batch_size)

    def make_optimizer(self, net: torch.nn.Module, steps_per_epoch: int):
        opt = torch.optim.SGD(net.parameters(), lr=self.lr, momentum=self.momentum,
                              weight_decay=self.weight_decay, nesterov=self.nesterov)
        total = max(1, self.epochs * steps_per_epoch)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)) * (1 - 1e-4) + 1e-4)
        return opt, sched

    def step_loss(self, net: torch.nn.Module, images: torch.Tensor,
                  labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scalar loss, logits [B, C]) of one batch; subclasses change the objective here."""
        logits = net(images)
        return F.cross_entropy(logits, labels), logits

    def state_dict(self) -> dict:
        """Extra state to checkpoint each epoch (AMP scaler, queues, ...); none for plain CE."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def train(self, net: torch.nn.Module, loader, device: torch.device,
              on_epoch_end: Callable[[int, dict, list], None] | None = None,
              resume_state: dict | None = None) -> list[dict]:
        """Train in place; returns per-epoch records ``{"epoch", "loss", "train_acc"}``.

        ``on_epoch_end(epoch, {"optimizer", "scheduler"}, history)`` runs after every epoch (the
        pipeline checkpoints there). ``resume_state`` (a saved epoch state) continues an interrupted run.
        """
        opt, sched = self.make_optimizer(net, len(loader))
        start_epoch, history = 0, []
        if resume_state:
            opt.load_state_dict(resume_state["optimizer"])
            sched.load_state_dict(resume_state["scheduler"])
            start_epoch, history = int(resume_state["epoch"]), list(resume_state.get("history", []))
        for epoch in range(start_epoch, self.epochs):
            net.train()
            total, correct, loss_sum = 0, 0, 0.0
            for batch in progress(loader, desc=f"epoch {epoch + 1}/{self.epochs}"):
                images, labels = batch[0].to(device), batch[1].to(device)
                if len(images) == 0:
                    continue
                loss, logits = self.step_loss(net, images, labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += len(labels)
                correct += (logits.argmax(1) == labels).sum().item()
                loss_sum += loss.item() * len(labels)
            record = {"epoch": epoch + 1, "loss": loss_sum / max(total, 1), "train_acc": correct / max(total, 1)}
            history.append(record)
            get_logger().debug("epoch %d: loss %.4f train acc %.4f", epoch + 1, record["loss"], record["train_acc"])
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, history)
        return history
