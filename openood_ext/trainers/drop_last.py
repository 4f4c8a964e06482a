"""An epoch of shuffled full batches: the short last batch of the training set is dropped.

Published recipes that train only full batches (NPOS's loader with ``drop_last=True``; OAML's loop, which
skips each epoch's last batch) get it through a trainer's ``batch_sampler`` hook
(``trainer.drop_last: true``), on either data path.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError


class DropLastBatchSampler:
    """Shuffled batches of ``batch_size`` indices over ``n`` items, the short last batch dropped; the
    order is a permutation seeded by (seed, epoch) (``set_epoch``), so a resumed run sees the same one."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if n < batch_size:
            raise ConfigError(f"trainer.drop_last: {n} training images make no full batch of {batch_size}")
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.batch_size

    def __iter__(self):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100003 + self.epoch))
        for i in range(len(self)):
            yield order[i * self.batch_size:(i + 1) * self.batch_size].tolist()
