"""Class-balanced batches for metric learning (VMDLS's ``BalancedBatchSampler``).

Each batch holds ``batch_classes`` distinct classes drawn at random, with ``sample_count`` images of each,
taken in order from that class's shuffled index list (reshuffled when it runs out). An epoch has as many
batches as the published sampler, which yields a batch only while ``count + batch_size < N`` (count = images
yielded so far), i.e. ``ceil(N / batch_size) - 1 = (N - 1) // batch_size`` batches,
one fewer than ``N // batch_size`` when the batch size divides N (here at least 1, so a tiny training set
still trains).

Departure: the published sampler keeps each class's shuffled list and position across epochs; here epoch e
starts from fresh permutations drawn from (seed, e), so that a resumed run sees exactly the batches an
uninterrupted one would without replaying earlier epochs. The distribution of a batch is the same.
The batches of epoch e depend only on (seed, e), so :meth:`set_epoch` makes the order reproducible.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError


class ClassBalancedBatchSampler:
    """Batch sampler yielding lists of dataset indices (use as ``DataLoader(batch_sampler=...)``).

    Args:
        labels: class label per training sample [N].
        batch_classes: B_c, classes per batch (<= number of classes present).
        sample_count: B_s, images per class per batch (<= size of the smallest class).
        seed: base seed; epoch e uses ``np.random.default_rng([seed, e])``.
    """

    def __init__(self, labels, batch_classes: int, sample_count: int, seed: int = 0):
        labels = np.asarray(torch.as_tensor(labels).cpu().numpy() if torch.is_tensor(labels) else labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ConfigError("trainer: class-balanced sampling needs a non-empty training label list")
        self.classes, counts = np.unique(labels, return_counts=True)
        if batch_classes > len(self.classes):
            raise ConfigError(f"trainer.batch_classes: {batch_classes} classes per batch, but the training "
                              f"split has only {len(self.classes)} classes")
        smallest = int(counts.min())
        if sample_count > smallest:
            small = int(self.classes[counts.argmin()])
            raise ConfigError(f"trainer.sample_count: {sample_count} images per class per batch, but class "
                              f"{small} has only {smallest} training images")
        self.batch_classes, self.sample_count, self.seed = int(batch_classes), int(sample_count), int(seed)
        self.by_class = [np.flatnonzero(labels == c) for c in self.classes]
        self.num_batches = max(1, (len(labels) - 1) // (self.batch_classes * self.sample_count))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch`` (deterministic)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = [rng.permutation(idx) for idx in self.by_class]
        pos = [0] * len(order)
        out = []
        for _ in range(self.num_batches):
            batch = []
            for k in rng.choice(len(order), self.batch_classes, replace=False):
                if pos[k] + self.sample_count > len(order[k]):
                    order[k], pos[k] = rng.permutation(self.by_class[k]), 0
                batch.extend(order[k][pos[k]:pos[k] + self.sample_count].tolist())
                pos[k] += self.sample_count
            out.append(batch)
        return out

    def __iter__(self):
        return iter(self.batches(self.epoch))

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.seed = int(state.get("epoch", self.epoch)), int(state.get("seed", self.seed))
