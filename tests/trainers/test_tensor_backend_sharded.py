"""The tensor data path under torchrun: each rank reads a disjoint share of the epoch's permutation with
``DistributedSampler``'s semantics (the order depends on (seed, epoch) only; the ranks' shares together
are the one-process order), augments with its own stream, and the training loader takes this path under
(fake) torchrun instead of the per-image one."""

from __future__ import annotations

import pytest
import torch

from openood_ext import distributed
from openood_ext.datasets import Benchmark
from openood_ext.datasets.batch_source import TensorBatchSource
from openood_ext.datasets.batch_transforms import BatchPipeline, HFlip, Normalize
from openood_ext.datasets.data_settings import DataSettings
from openood_ext.datasets.decoded_cache import DecodedImages
from openood_ext.errors import ConfigError
from openood_ext.trainers import Trainer
from openood_ext.trainers.data import build_train_loader
from openood_ext.trainers.vmdls_sampler import ClassBalancedBatchSampler
from data_helpers import random_png_list


def decoded(n=11):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return DecodedImages(images, torch.arange(n) % 3)


def shares(n, world, seed, epoch, batch_size=2):
    out = []
    for r in range(world):
        src = TensorBatchSource(decoded(n), BatchPipeline([]), batch_size, seed, rank=r, world=world)
        src.sampler.set_epoch(epoch)
        batches = list(src.index_batches())
        assert len(batches) == len(src)
        out.append(torch.cat(batches).tolist())
    return out


@pytest.mark.parametrize("n, world", [(11, 3), (12, 4), (5, 2)])
def test_rank_shares_are_disjoint_slices_of_one_seeded_permutation(n, world):
    for epoch in (0, 1):
        got = shares(n, world, seed=7, epoch=epoch)
        per_rank = -(-n // world)
        assert all(len(s) == per_rank for s in got)  # equal step counts keep DDP in lock-step
        dealt = [got[r][i] for i in range(per_rank) for r in range(world)]  # rank r holds positions r, r+W, ...
        one = torch.randperm(n, generator=torch.Generator().manual_seed(7 + epoch)).tolist()
        assert dealt[:n] == one and dealt[n:] == one[:len(dealt) - n]  # the one-process order, padded by its start
        assert sorted(dealt[:n]) == list(range(n))
        for r in range(world):  # exactly DistributedSampler's share (the per-image path's torchrun sampler)
            ref = torch.utils.data.DistributedSampler(range(n), num_replicas=world, rank=r, shuffle=True, seed=7)
            ref.set_epoch(epoch)
            assert got[r] == list(ref)
    assert shares(n, world, 7, 0) != shares(n, world, 7, 1) and shares(n, world, 7, 1) == shares(n, world, 7, 1)


def test_each_rank_augments_with_its_own_stream_and_one_process_is_unchanged():
    flips = BatchPipeline([HFlip(), Normalize([0.0], [1.0])])
    alone = TensorBatchSource(decoded(), flips, 4, seed=3)
    assert alone.sampler is None and torch.equal(alone.generator.get_state(),
                                                 torch.Generator().manual_seed(3).get_state())
    states = [TensorBatchSource(decoded(), flips, 4, seed=3, rank=r, world=2).generator.get_state() for r in range(2)]
    assert not torch.equal(states[0], states[1])
    again = TensorBatchSource(decoded(), flips, 4, seed=3, rank=1, world=2)
    assert torch.equal(again.generator.get_state(), states[1])


@pytest.fixture
def bench(tmp_path):
    random_png_list(tmp_path, 10)
    pre = {"image_size": 8, "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3, "train_augment": ["hflip"]}
    return Benchmark(num_classes=3, id={"train": "list.txt", "val": "list.txt", "test": "list.txt"},
                     imglist_dir=str(tmp_path), data_root=str(tmp_path), preprocessor=pre)


@pytest.fixture
def fake_ranks(monkeypatch):
    """torchrun as the distributed helpers see it, without a process group: ``set_rank(r, world)``."""
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "broadcast_object", lambda obj, src=0: obj)

    def set_rank(r, world):
        monkeypatch.setattr(distributed, "rank", lambda: r)
        monkeypatch.setattr(distributed, "world_size", lambda: world)
    return set_rank


def test_the_training_loader_takes_the_tensor_path_under_torchrun(bench, tmp_path, fake_ranks):
    data = DataSettings(backend="tensor", cache_dir=str(tmp_path / "cache"))
    seen = []
    for r in range(2):
        fake_ranks(r, 2)
        source = build_train_loader(bench, Trainer(), 2, seed=5, data=data)
        assert isinstance(source, TensorBatchSource) and source.sampler.num_replicas == 2
        source.sampler.set_epoch(1)
        seen.append(torch.cat(list(source.index_batches())).tolist())
        assert len(source) == 3 and sum(len(labels) for _, labels, _ in source) == 5
    assert sorted(seen[0] + seen[1]) == list(range(10))
    fake_ranks(0, 11)
    with pytest.raises(ConfigError, match=r"10 sample\(s\) for 11 processes"):
        build_train_loader(bench, Trainer(), 2, seed=5, data=data)


def test_a_trainers_batch_sampler_is_dealt_over_the_ranks(bench, tmp_path, fake_ranks):
    class Balanced(Trainer):
        def batch_sampler(self, labels, batch_size, seed):
            return ClassBalancedBatchSampler(torch.as_tensor(labels), batch_classes=2, sample_count=2, seed=seed)

    full = list(ClassBalancedBatchSampler(torch.arange(10) % 3, batch_classes=2, sample_count=2, seed=5))
    got = []
    for r in range(2):
        fake_ranks(r, 2)
        source = build_train_loader(bench, Balanced(), 4, seed=5, data=DataSettings(backend="tensor"))
        assert isinstance(source.batch_sampler, distributed.ShardedBatchSampler) and source.sampler is None
        got.append([b.tolist() for b in source.index_batches()])
    assert [got[r][i] for i in range(len(got[0])) for r in range(2)][:len(full)] == full
