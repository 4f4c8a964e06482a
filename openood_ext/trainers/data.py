"""The ID training loader of a run: the benchmark's training split, shuffled with a seeded generator,
or with the trainer's own transform / batch sampler when it defines them.

Under torchrun (see :mod:`openood_ext.distributed`) each rank reads its own share, on either backend: a
``DistributedSampler`` seeded by (seed, epoch) (the tensor path's :class:`~openood_ext.datasets.batch_source.
TensorBatchSource` with the same semantics), or the trainer's batch sampler dealt round-robin over the ranks
(:class:`~openood_ext.distributed.ShardedBatchSampler`); ``batch_size`` is per process.
"""

from __future__ import annotations

import torch

from .. import distributed
from ..datasets.batch_source import TensorBatchSource
from ..datasets.batch_transforms import Then
from ..datasets.decoded_cache import DecodedCache, NotSmall
from ..datasets.imglist import SkipCounter
from ..datasets.jpeg_batches import JpegBatchSource, jpeg_obstacle
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
    A source with ``use_data_settings`` gets ``data`` first (``oe_images`` reads ``data.max_side``).
    """
    opts = dict(loader_options) if loader_options is not None else {"num_workers": num_workers}
    if data is not None and hasattr(source, "use_data_settings"):  # e.g. data.max_side for an outlier pool
        source.use_data_settings(data)
    if data is not None and data.backend != "pil":
        tensors = tensor_train_source(benchmark, trainer, batch_size, seed, data, device, log, source,
                                      num_workers=int(opts.get("num_workers", 0)))
        if tensors is not None:
            return tensors
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


def jpeg_train_source(benchmark, dataset, batch_size: int, seed: int, device, log, num_workers: int = 0):
    """The training split as a :class:`~openood_ext.datasets.jpeg_batches.JpegBatchSource` (large JPEG
    images decoded per batch on the CUDA ``device``; the recipe's ops batched there too)."""
    pre = dict(benchmark.preprocessor)
    pipeline = tensor_pipeline(pre, train=True)
    extra = tuple(getattr(benchmark, "train_batch_ops", None) or ())
    if extra:
        pipeline = Then(pipeline, extra)
    rank, world = distributed.rank(), distributed.world_size()
    source = JpegBatchSource(dataset, geometry(pre), pipeline, batch_size, seed, device,
                             num_workers=num_workers, rank=rank, world=world)
    log.info("data backend: JPEG files decoded a batch at a time on %s (%d images; %s)", device, len(dataset), pipeline)
    return source


def _decode_once(cache: DecodedCache, dataset, geometry: dict):
    """``cache.load``; under torchrun with a cache on disk rank 0 decodes and writes it first and the other
    ranks then read it (one decoding, no two writers); NotSmall on every rank when the images are large."""
    if distributed.world_size() == 1 or cache.root is None:
        return cache.load(dataset, geometry)
    mine = {}

    def first() -> str | None:
        try:
            mine["decoded"] = cache.load(dataset, geometry)
        except NotSmall as exc:
            return str(exc)
        return None

    too_large = distributed.run_on_main(first)
    if too_large is not None:
        raise NotSmall(too_large)
    return mine["decoded"] if "decoded" in mine else cache.load(dataset, geometry)


def tensor_train_source(benchmark, trainer, batch_size: int, seed: int, data, device, log=None, source=None,
                        num_workers: int = 0):
    """The ID training split as a :class:`~openood_ext.datasets.batch_source.TensorBatchSource`, or None
    (with one log line naming the reason) when ``data.backend`` is ``auto`` and the recipe needs the PIL
    path; with ``backend: tensor`` that reason is a ConfigError (a too-large image a DataError). Images
    too large for the cache take :func:`jpeg_train_source` when they are JPEG files and ``device`` is
    CUDA (``num_workers`` then read the files' bytes)."""
    log = log or get_logger()
    reason = tensor_backend_obstacle(benchmark, trainer, source)
    if reason is None:
        pre = dict(benchmark.preprocessor)
        dataset = benchmark.dataset(benchmark.split("id_train"), train=False)
        try:
            decoded = _decode_once(DecodedCache(data.cache_root(), data.max_side, log), dataset, geometry(pre))
        except NotSmall as exc:
            gpu_jpeg = jpeg_obstacle(dataset, device)
            if gpu_jpeg is None and (trainer.train_transform(pre) is not None
                                     or trainer.batch_sampler(dataset.labels(), batch_size, seed) is not None):
                gpu_jpeg = "batched JPEG decoding takes the benchmark's recipe only (the trainer brings its own " \
                           "transform or batch sampler)"
            if gpu_jpeg is None:  # large JPEGs on CUDA: decoded a batch at a time on the GPU
                return jpeg_train_source(benchmark, dataset, batch_size, seed, device, log, num_workers)
            if data.backend == "tensor":
                raise DataError(f"data.backend tensor: {exc}; {gpu_jpeg}") from None
            reason = f"{exc}; {gpu_jpeg}"
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
    rank, world = distributed.rank(), distributed.world_size()
    if world > 1:  # each rank its share, as the per-image path's samplers deal it
        if sampler is not None:
            sampler = distributed.ShardedBatchSampler(sampler, rank, world)
        elif world > len(decoded):
            raise ConfigError(f"trainer: the training split has {len(decoded)} sample(s) for {world} processes "
                              f"(run torchrun with --nproc_per_node <= {len(decoded)})")
    batches = TensorBatchSource(decoded, pipeline, batch_size, seed, where, batch_sampler=sampler, rank=rank, world=world)
    stage = getattr(trainer, "raw_batch_stage", None)
    batches.raw_stage = stage(source) if stage is not None else None  # e.g. FCDD's online supervisor
    log.info("data backend: tensor (%d images as one uint8 tensor on %s, %s; %s%s)%s", len(decoded), where,
             decoded.source, f"{batches.raw_stage} then " if batches.raw_stage is not None else "", pipeline,
             f"; rank {rank} of {world} reads its share" if world > 1 else "")
    return batches
