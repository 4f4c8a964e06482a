"""The ID training loader under torchrun: each rank's workers get their own augmentation stream."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from openood_ext import distributed
from openood_ext.trainers.data import build_train_loader


class Tiny(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.zeros(1), i

    def labels(self):
        return [0, 1, 0, 1]


def test_each_rank_seeds_its_loader_generator_differently(monkeypatch):
    bench = SimpleNamespace(split=lambda name: name, dataset=lambda split, train: Tiny(), preprocessor={})
    trainer = SimpleNamespace(train_transform=lambda pre: None, batch_sampler=lambda labels, bs, seed: None)
    seeds = []
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        seeds.append(build_train_loader(bench, trainer, 2, seed=5).generator.initial_seed())
    assert seeds[0] == 5 and seeds[1] != seeds[0]  # rank 0 (and a single process) as before
