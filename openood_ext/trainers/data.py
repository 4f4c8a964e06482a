"""The ID training loader of a run: the benchmark's training split, shuffled with a seeded generator,
or with the trainer's own transform / batch sampler when it defines them."""

from __future__ import annotations

import torch

from ..datasets.imglist import SkipCounter


def build_train_loader(benchmark, trainer, batch_size: int, seed: int, num_workers: int = 0):
    """DataLoader of ``(images, labels, n_skipped)`` over ``benchmark``'s ``id_train`` split."""
    split = benchmark.split("id_train")
    transform = trainer.train_transform(dict(benchmark.preprocessor))
    dataset = benchmark.dataset(split, train=True)
    sampler = trainer.batch_sampler(dataset.labels(), batch_size, seed)
    if transform is None and sampler is None:
        return benchmark.loader(split, batch_size=batch_size, num_workers=num_workers, train=True, seed=seed)
    if transform is not None:
        dataset.transform = transform
    generator = torch.Generator().manual_seed(seed)
    if sampler is not None:
        return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                           collate_fn=SkipCounter(), generator=generator)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator,
                                       num_workers=num_workers, collate_fn=SkipCounter())
