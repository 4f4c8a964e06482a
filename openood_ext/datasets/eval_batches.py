"""Evaluation batches from the decoded-image cache: the test-time counterpart of :mod:`.batch_source`.

The per-image evaluation path is ``Resize -> CenterCrop -> ToTensor -> Normalize`` in a DataLoader. The
decoded-image cache (:mod:`.decoded_cache`) stores the output of the first two steps, made by the same PIL
code; :func:`.tensor_recipe.tensor_pipeline` with ``train=False`` (no augmentation) does the last two on
whole batches with the same float operations in the same order. A batch therefore equals the per-image
path's tensors bit for bit, and a test run gives the same network outputs, hence the same metrics, on
either backend (the network-output cache key does not name the backend).

:func:`eval_loader` gives a split's :class:`DecodedSplitLoader`, or None when the split keeps the
per-image path, with one log line naming why: ``data.backend: pil``; a preprocessing step with no
batched counterpart (``raw_size``); a benchmark wrapping its datasets in an extra per-image transform
without declaring its batched form for that split (``split_batch_ops``, as EOE's ``ms_mode`` filter
does, ``pipelines/ad/data.py``); images larger than ``data.max_side``; a split of which no image could
be read (the per-image path reports it as it always does). Unlike training, ``backend: tensor`` does not
turn these into an error: the sets of one benchmark differ in image size (CIFAR-10 next to the large
Textures images), so each split takes the path it can.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import torch

from .batch_transforms import Then
from .decoded_cache import DecodedCache, DecodedImages, NotSmall
from .tensor_recipe import geometry, tensor_pipeline, unsupported


class RowsView:
    """``loader.dataset`` of a :class:`DecodedSplitLoader`: its row count, and the per-image path's
    ``transform`` of the split, which readers of a loader's dataset look up (ODIN and the other input
    perturbation methods take the input std from its ``Normalize``)."""

    def __init__(self, n: int, transform=None):
        self.n, self.transform = int(n), transform

    def __len__(self) -> int:
        return self.n


class DecodedSplitLoader:
    """``(images, labels, n_skipped)`` batches of a decoded split, unshuffled, in list order.

    It offers what the evaluation forward asks of a DataLoader: iteration, ``len`` (batches),
    ``batch_size``, ``dataset`` (:class:`RowsView`: the rows it covers) and :meth:`subset` (a torchrun shard,
    :func:`openood_ext.distributed.shard_loader`). Images are float [B, C, H, W] on the device holding
    the decoded set; labels int64 on the CPU (as a DataLoader yields them). The count of images skipped
    while decoding (``on_bad_image: skip``) rides the first batch of the loader that holds row 0.

    Args:
        decoded: the decoded split (uint8 [N, C, H, W]).
        pipeline: uint8 batch -> float batch (normalisation, and any declared batched op).
        batch_size: images per batch (the last batch may be smaller).
        rows: the rows of ``decoded`` to yield, in this order (default: all).
        skipped: the skipped count to report (default: ``decoded.skipped``).
        transform: the per-image path's transform of the split (``dataset.transform``).
    """

    def __init__(self, decoded: DecodedImages, pipeline, batch_size: int, rows: torch.Tensor | None = None,
                 skipped: int | None = None, transform=None):
        self.decoded, self.pipeline, self.batch_size = decoded, pipeline, int(batch_size)
        self.rows = torch.arange(len(decoded)) if rows is None else torch.as_tensor(rows, dtype=torch.long)
        self.skipped = decoded.skipped if skipped is None else int(skipped)
        self.dataset = RowsView(len(self.rows), transform)

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def __iter__(self):
        images, labels = self.decoded.images, self.decoded.labels.cpu()
        skipped = self.skipped
        for idx in self.rows.split(self.batch_size):
            batch_labels = labels[idx]
            x = self.pipeline(images[idx.to(images.device)], None, batch_labels.to(images.device))
            yield x, batch_labels, skipped
            skipped = 0

    def subset(self, positions: Sequence[int]) -> "DecodedSplitLoader":
        """A loader over ``positions`` of this one's rows (the skipped count goes with position 0)."""
        positions = torch.as_tensor(list(positions), dtype=torch.long)
        first = bool(len(positions)) and int(positions[0]) == 0
        return DecodedSplitLoader(self.decoded, self.pipeline, self.batch_size, self.rows[positions],
                                  self.skipped if first else 0, self.dataset.transform)

    def __repr__(self) -> str:
        return f"DecodedSplitLoader({len(self.rows)} images, batch {self.batch_size}, {self.pipeline!r})"


def eval_obstacle(benchmark, split) -> str | None:
    """What keeps ``split`` of ``benchmark`` on the per-image path before any image is read, or None."""
    if "dataset" in vars(benchmark):  # dataset() wrapped per instance with an extra per-image transform
        ops = getattr(benchmark, "split_batch_ops", None)
        if ops is None:
            return "a per-image transform wrapped around the benchmark's datasets, with no batched counterpart"
    return unsupported(benchmark.preprocessor, train=False)


def eval_loader(benchmark, split, data, batch_size: int, device: torch.device | str = "cpu",
                log: logging.Logger | None = None, rows: Sequence[int] | None = None) -> DecodedSplitLoader | None:
    """``split``'s evaluation batches from the decoded-image cache, or None (see the module docstring).

    ``data``: the run's :class:`~.data_settings.DataSettings` (None: the per-image path). The decoded set
    is held on ``device`` with ``data.on_device``, else in host memory. ``rows``: list indices (0-based,
    in the image list) to yield, in this order (default: every readable image); a listed image that was
    skipped while decoding keeps the split on the per-image path.
    """
    if data is None or data.backend == "pil":
        return None
    log = log or logging.getLogger("openood_ext")
    pre = dict(benchmark.preprocessor)
    reason = eval_obstacle(benchmark, split)
    decoded = dataset = None
    if reason is None:
        dataset = benchmark.dataset(split)
        try:
            decoded = DecodedCache(data.cache_root(), data.max_side, log).load(dataset, geometry(pre))
        except NotSmall as exc:
            reason = str(exc)
        else:
            if len(decoded) == 0:
                reason = f"none of its {decoded.skipped} images could be read"
    positions = None
    if reason is None and rows is not None:
        positions = _positions(decoded, rows)
        if positions is None:
            reason = "an image to be scored could not be read"
    if reason is not None:
        log.info("evaluation images of %s: per-image PIL path (%s)", split.name, reason)
        return None
    where = torch.device(device) if data.on_device else torch.device("cpu")
    decoded.images = decoded.images.to(where)
    pipeline = tensor_pipeline(pre, train=False)
    extra = tuple((getattr(benchmark, "split_batch_ops", None) or {}).get(split.name, ()))
    if extra:  # e.g. EOE's Fourier filter on the normalised test images
        pipeline = Then(pipeline, extra)
    return DecodedSplitLoader(decoded, pipeline, batch_size, positions, 0 if rows is not None else None,
                              dataset.transform)


def _positions(decoded: DecodedImages, rows: Sequence[int]) -> torch.Tensor | None:
    """The decoded rows of list indices ``rows`` (None when one of them was skipped)."""
    kept = decoded.kept if decoded.kept is not None else torch.arange(len(decoded))
    rows = torch.as_tensor(list(rows), dtype=torch.long)
    pos = torch.searchsorted(kept, rows).clamp_max(max(len(kept) - 1, 0))
    if len(kept) == 0 or not torch.equal(kept[pos], rows):
        return None
    return pos
