"""The ID training loader of a run: the benchmark's training split, shuffled with a seeded generator,
or with the trainer's own transform / batch sampler when it defines them.

Under torchrun (see :mod:`openood_ext.distributed`) each rank reads its own share: a ``DistributedSampler``
seeded by (seed, epoch), or the trainer's batch sampler dealt round-robin over the ranks
(:class:`~openood_ext.distributed.ShardedBatchSampler`); ``batch_size`` is per process.
"""

from __future__ import annotations

import torch

from .. import distributed
from ..datasets.batch_source import TensorBatchSource
from ..datasets.batch_transforms import Then
from ..datasets.decoded_cache import DecodedCache, NotSmall
from ..datasets.imglist import SkipCounter
from ..datasets.tensor_recipe import geometry, tensor_pipeline, unsupported
from ..errors import ConfigError, DataError
from ..utils.runtime import get_logger


def build_train_loader(benchmark, trainer, batch_size: int, seed: int, num_workers: int = 0,
                       loader_options: dict | None = None, data=None, device: torch.device | str = "cpu",
                       log=None, source=None):
    """DataLoader of ``(images, labels, n_skipped)`` over ``benchmark``'s ``id_train`` split.

    ``loader_options``: DataLoader keywords (``num_workers``, ``pin_memory``, ``persistent_workers``,
    ``prefetch_factor``; see :func:`openood_ext.utils.runtime.loader_options`); ``num_workers`` alone
    when omitted.

    ``data``: the run's :class:`~openood_ext.datasets.data_settings.DataSettings`; unless its backend is
    ``pil``, a :class:`~openood_ext.datasets.batch_source.TensorBatchSource` on ``device`` is returned
    where the recipe allows it (:func:`tensor_train_source`).

    ``source``: the run's outlier source; the trainer may wrap the training set around it
    (:meth:`~openood_ext.trainers.trainer.Trainer.train_dataset`, e.g. FCDD's dataset-side supervision).
    """
    if data is not None and data.backend != "pil":
        tensors = tensor_train_source(benchmark, trainer, batch_size, seed, data, device, log, source)
        if tensors is not None:
            return tensors
    opts = dict(loader_options) if loader_options is not None else {"num_workers": num_workers}
    split = benchmark.split("id_train")
    transform = trainer.train_transform(dict(benchmark.preprocessor))
    dataset = benchmark.dataset(split, train=True)
    if transform is not None:
        dataset.transform = transform
    if hasattr(trainer, "train_dataset"):  # duck-typed trainers read the set as it is
        dataset = trainer.train_dataset(dataset, dict(benchmark.preprocessor), source, seed)
    sampler = trainer.batch_sampler(dataset.labels(), batch_size, seed)
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


def _own_batch_transform(trainer, pre):
    """The trainer's batched counterpart of its own training transform, or None (duck-typed trainers)."""
    own = getattr(trainer, "train_batch_transform", None)
    return own(dict(pre)) if own is not None else None


def tensor_backend_obstacle(benchmark, trainer, source=None) -> str | None:
    """What keeps the ID training split off the tensor backend (naming the transform), or None."""
    if distributed.is_distributed():
        return "torchrun data parallelism (each rank reads its own share through a DataLoader)"
    change = trainer.train_dataset_change(source) if hasattr(trainer, "train_dataset_change") else None
    if change is not None:
        return change
    if trainer.train_transform(dict(benchmark.preprocessor)) is not None:  # replaces the benchmark's transform
        if _own_batch_transform(trainer, benchmark.preprocessor) is None:
            return f"the trainer's own training transform ({type(trainer).__name__}.train_transform)"
        return None
    if "dataset" in vars(benchmark) and getattr(benchmark, "train_batch_ops", None) is None:
        return "a per-image transform wrapped around the benchmark's datasets, with no batched counterpart"
    return unsupported(benchmark.preprocessor, train=True)


def tensor_train_source(benchmark, trainer, batch_size: int, seed: int, data, device, log=None, source=None):
    """The ID training split as a :class:`~openood_ext.datasets.batch_source.TensorBatchSource`, or None
    (with one log line naming the reason) when ``data.backend`` is ``auto`` and the recipe needs the PIL
    path; with ``backend: tensor`` that reason is a ConfigError (a too-large image a DataError)."""
    log = log or get_logger()
    reason = tensor_backend_obstacle(benchmark, trainer, source)
    if reason is None:
        pre = dict(benchmark.preprocessor)
        dataset = benchmark.dataset(benchmark.split("id_train"), train=False)
        try:
            decoded = DecodedCache(data.cache_root(), data.max_side, log).load(dataset, geometry(pre))
        except NotSmall as exc:
            if data.backend == "tensor":
                raise DataError(f"data.backend tensor: {exc}") from None
            reason = str(exc)
    if reason is not None:
        if data.backend == "tensor":
            raise ConfigError(f"data.backend: tensor cannot run this recipe ({reason}); use auto or pil")
        log.info("data backend: per-image PIL path (%s)", reason)
        return None
    where = torch.device(device) if data.on_device else torch.device("cpu")
    pipeline = _own_batch_transform(trainer, pre) if trainer.train_transform(pre) is not None else None
    if pipeline is None:  # the benchmark's transform, and what a wrapped dataset adds to it
        pipeline = tensor_pipeline(pre, train=True)
        extra = tuple(getattr(benchmark, "train_batch_ops", None) or ())
        if extra:  # e.g. EOE's Fourier filter on the normalised training images
            pipeline = Then(pipeline, extra)
    sampler = trainer.batch_sampler(decoded.labels, batch_size, seed)
    batches = TensorBatchSource(decoded, pipeline, batch_size, seed, where, batch_sampler=sampler)
    stage = getattr(trainer, "raw_batch_stage", None)
    batches.raw_stage = stage(source) if stage is not None else None  # e.g. FCDD's online supervisor
    log.info("data backend: tensor (%d images as one uint8 tensor on %s, %s; %s%s)", len(decoded), where,
             decoded.source, f"{batches.raw_stage} then " if batches.raw_stage is not None else "", pipeline)
    return batches
