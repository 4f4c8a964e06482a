"""Training batches drawn from a decoded image set held whole in memory (on the training device), each
batch augmented at once (:mod:`.batch_transforms`): what the engine iterates instead of a DataLoader
when ``data.backend`` is ``tensor``.

The engine asks only what it asks of a DataLoader: ``len(source)`` batches per epoch, iteration yielding
``(images, labels, n_skipped)`` (already on the device), ``source.dataset`` (its length) and
``source.generator``, the one ``torch.Generator`` behind the shuffle and every augmentation draw, whose
state the engine saves with the training state and restores on resume (same batches after resume).

Shuffling draws from the generator exactly what a ``DataLoader(shuffle=True, generator=g)`` draws (a
base seed, the epoch's permutation and a second, unused permutation), so a CPU generator yields the
DataLoader's order; with a trainer's batch sampler (class-balanced batches), its index batches are used.

Under torchrun (``world > 1``) each rank reads its own share with ``DistributedSampler``'s semantics,
the sampler the per-image path uses there: epoch e's permutation depends on (seed, e) only, the same
on every rank, padded by its first indices to a multiple of the world size, and rank r takes positions
r, r + W, r + 2W, ...; the ranks' shares are disjoint (up to the padding) and together are the order a
one-process run of the same sampler reads. The engine's ``set_epoch`` reaches it through ``sampler``.
The generator then draws augmentation only, seeded per rank (``seed + 7919 * rank``, as the per-image
path seeds its workers), so the ranks augment independently. A trainer's batch sampler is dealt over the
ranks by the caller (``distributed.ShardedBatchSampler``).

``raw_stage`` (optional, set by the caller): ``(uint8 batch, generator) -> (uint8 batch, marked [B] bool)``
applied to the decoded batch before the pipeline (FCDD's online supervisor,
:class:`~openood_ext.synthesizers.supervisor.RawBatchSupervision`); marked samples get label -1. The
pipeline still sees the images' own labels (per-class normalisation).
"""

from __future__ import annotations

import math

import torch

from .batch_transforms import BatchPipeline
from .decoded_cache import DecodedImages


class TensorBatchSource:
    """Shuffled, augmented batches of ``decoded`` (see the module docstring).

    Args:
        decoded: the decoded image set (uint8 [N, C, H, W], labels [N]).
        pipeline: uint8 batch -> float batch (augmentation and normalisation).
        batch_size: images per batch (the last batch may be smaller).
        seed: seeds the generator.
        device: where the images are held and the batches made.
        batch_sampler: optional iterable of index lists (``len`` batches; ``set_epoch`` is forwarded).
        rank, world: this process's share under torchrun (see the module docstring); (0, 1) alone.
    """

    def __init__(self, decoded: DecodedImages, pipeline: BatchPipeline, batch_size: int, seed: int,
                 device: torch.device | str = "cpu", batch_sampler=None, rank: int = 0, world: int = 1):
        self.device = torch.device(device)
        self.images = decoded.images.to(self.device)
        self.labels = decoded.labels.to(self.device)
        self.dataset = decoded
        self.pipeline, self.batch_size = pipeline, int(batch_size)
        self.batch_sampler = batch_sampler
        self.sampler = None
        if world > 1 and batch_sampler is None:
            self.sampler = torch.utils.data.DistributedSampler(decoded, num_replicas=world, rank=rank, shuffle=True,
                                                               seed=int(seed), drop_last=False)
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed) + (7919 * rank if world > 1 else 0))
        self.raw_stage = None

    def __len__(self) -> int:
        if self.batch_sampler is not None:
            return len(self.batch_sampler)
        if self.sampler is not None:
            return math.ceil(len(self.sampler) / self.batch_size)
        return math.ceil(len(self.labels) / self.batch_size)

    def epoch_order(self) -> torch.Tensor:
        """This epoch's permutation of the images (draws as a shuffling DataLoader does)."""
        g, n = self.generator, len(self.labels)
        torch.empty((), dtype=torch.int64, device=g.device).random_(generator=g)  # DataLoader's base seed
        order = torch.randperm(n, generator=g, device=g.device)
        torch.randperm(n, generator=g, device=g.device)  # RandomSampler's trailing (empty) slice still draws
        return order.to(self.device)

    def index_batches(self):
        if self.batch_sampler is not None:
            for idx in self.batch_sampler:
                yield torch.as_tensor(list(idx), dtype=torch.long, device=self.device)
            return
        if self.sampler is not None:  # this rank's share of the epoch's (seed, epoch) permutation
            yield from torch.as_tensor(list(self.sampler), dtype=torch.long, device=self.device).split(self.batch_size)
            return
        order = self.epoch_order()
        yield from order.split(self.batch_size)

    def __iter__(self):
        for idx in self.index_batches():
            labels, images, marked = self.labels[idx], self.images[idx], None
            if self.raw_stage is not None:
                images, marked = self.raw_stage(images, self.generator)
            out = self.pipeline(images, self.generator, labels)
            yield out, labels if marked is None else labels.masked_fill(marked, -1), 0
