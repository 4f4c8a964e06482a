"""The ID training loader of a run: the benchmark's training split, shuffled with a seeded generator,
or with the trainer's own transform / batch sampler when it defines them.

Under torchrun (see :mod:`openood_ext.distributed`) each rank reads its own share: a ``DistributedSampler``
seeded by (seed, epoch), or the trainer's batch sampler dealt round-robin over the ranks
(:class:`~openood_ext.distributed.ShardedBatchSampler`); ``batch_size`` is per process.
"""

from __future__ import annotations

import torch

from .. import distributed
from ..datasets.imglist import SkipCounter


def build_train_loader(benchmark, trainer, batch_size: int, seed: int, num_workers: int = 0,
                       loader_options: dict | None = None):
    """DataLoader of ``(images, labels, n_skipped)`` over ``benchmark``'s ``id_train`` split.

    ``loader_options``: DataLoader keywords (``num_workers``, ``pin_memory``, ``persistent_workers``,
    ``prefetch_factor``; see :func:`openood_ext.utils.runtime.loader_options`); ``num_workers`` alone
    when omitted.
    """
    opts = dict(loader_options) if loader_options is not None else {"num_workers": num_workers}
    split = benchmark.split("id_train")
    transform = trainer.train_transform(dict(benchmark.preprocessor))
    dataset = benchmark.dataset(split, train=True)
    sampler = trainer.batch_sampler(dataset.labels(), batch_size, seed)
    if transform is not None:
        dataset.transform = transform
    # the loader's generator seeds its workers' augmentation: each torchrun rank gets its own stream
    generator = torch.Generator().manual_seed(seed + 7919 * distributed.rank())
    if sampler is not None:
        if distributed.is_distributed():
            sampler = distributed.ShardedBatchSampler(sampler)
        return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=SkipCounter(),
                                           generator=generator, **opts)
    if distributed.is_distributed():
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=distributed.train_sampler(dataset, seed),
                                           generator=generator, collate_fn=SkipCounter(), drop_last=False, **opts)
    # the same loader as Benchmark.loader(split, train=True, seed=seed), with the configured options
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator,
                                       collate_fn=SkipCounter(), drop_last=False, **opts)
