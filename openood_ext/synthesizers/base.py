"""The outlier-source contract shared by image-space and feature-space sources.

An outlier source is built from ``trainer.outliers`` (a OUTLIER_SOURCES entry) and set up once per run:

    source.setup(SourceContext(...))        # benchmark, device, seed, ID batch size, steps per epoch
    source.check()                          # before training: DataError if its data is absent
    source.on_epoch_start(epoch)            # 0-based; image sources reseed their draw here
    source.draw(batch)                      # images: a tensor [B_out, C, H, W] on the device

Image sources (``kind = "images"``) fill ``batch.outliers`` in the engine. Feature-space sources
(``kind = "features"``, e.g. NPOS) are called by their trainer through ``ctx.outliers``, since they need
the network's embeddings of the current batch. Both save what resume needs in ``state_dict``.

An image source with ``dataset_side = True`` (FCDD's supervisor position: ``supervisor: online|offline``
of ``confetti`` and ``fcdd_noise``, ``supervisor: online`` of ``oe_images``) is not drawn by the engine:
its trainer wraps the training set (``Trainer.train_dataset``) and the source's ``corrupt255`` makes the anomalies there, before the
training transform (:mod:`.supervisor`; on the tensor data path the batch source applies the
trainer's ``raw_batch_stage`` to the raw decoded batch instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class SourceContext:
    """What a source may use: the benchmark (transforms, data root, its ``oe`` split), the device, the
    run's seed, the ID batch size, the number of steps per epoch (and ID images, ``train_size``) and the
    loader workers. ``subset_key``
    (None, or an int such as the AD pipeline's normal class) joins the seed when a source draws a
    fixed subset of its pool (``oe_images`` ``limit``), so each class x seed gets its own subset.

    ``rank`` / ``world_size``: this process's place in a torchrun job (0 / 1 otherwise). Under data
    parallelism a source must not hand every rank the same outliers: image pools are dealt out by rank
    and random draws are seeded with the rank (:func:`rank_key`), so a global step holds N different
    outlier batches; a single process draws exactly what it drew before."""

    benchmark: Any
    device: torch.device
    seed: int
    batch_size: int
    steps_per_epoch: int
    num_workers: int = 0
    subset_key: int | None = None
    rank: int = 0
    world_size: int = 1
    train_size: int | None = None  # ID training images per epoch (None: steps_per_epoch x batch_size)


def rank_key(ctx) -> list[int]:
    """Entropy to append to a seed so torchrun ranks draw differently: ``[rank]`` under torchrun, ``[]``
    in a single process (whose draws stay what they were). ``ctx``: a SourceContext or look-alike."""
    return [int(getattr(ctx, "rank", 0))] if int(getattr(ctx, "world_size", 1)) > 1 else []


class OutlierSource:
    """Base class of outlier sources. ``kind``: ``"images"`` or ``"features"``."""

    kind: str = "images"
    supervisor: str = "batch"  # where an image source's anomalies are made (FCDD's position)

    @property
    def dataset_side(self) -> bool:
        """The anomalies are made in the training set (``supervisor`` other than ``batch``), not drawn by
        the engine."""
        return self.supervisor != "batch"

    def setup(self, ctx: SourceContext) -> None:
        self.ctx = ctx

    def check(self) -> None:
        """Raise DataError (one line: what is missing and how to provide it) before any training."""

    def on_epoch_start(self, epoch: int) -> None:
        pass

    def draw(self, batch) -> torch.Tensor:
        """Outliers for this step (image sources); ``batch`` is the ID :class:`~openood_ext.trainers.Batch`."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for the log: what this source draws from."""
        return type(self).__name__

    def label(self) -> str:
        """A short name for tables (the leaderboard's Outlier_Data column)."""
        return getattr(self, "_registry_name", type(self).__name__)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
