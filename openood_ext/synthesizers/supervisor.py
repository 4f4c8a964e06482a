"""Dataset-side supervision: a source's artificial anomalies made where FCDD makes them, on the stored
image *before* the training transform (FCDD's ``OnlineSupervisor`` is the first of the dataset's
transforms, and its offline supervisor writes the anomalies into the training data), so the random crop,
the colour jitter, the noise and the normalisation act on the anomaly as on a normal image.

An image source with ``supervisor: online`` or ``offline`` (``confetti``, ``fcdd_noise``; ``oe_images``
online: the outlier image replaces the stored image) is not drawn by
the engine; the trainer wraps the training set in :class:`DatasetSupervision` instead. Items are
``(stack [2, C, H, W], label)``: the transformed image and its ground-truth map (broadcast over the
channels: 1 = anomalous pixel), with label -1 for an artificial anomaly (the image list's label
otherwise). FCDD's maps: all ones for an anomaly (``noise``, ``malformed_normal``), the changed pixels
for ``malformed_normal_gt``, zeros for a normal image; the map takes the image's crop/resize.

* ``online`` (FCDD's ``OnlineSupervisor``): each item is replaced with probability ``p`` by an anomaly
  made from it (a Python ``random.random()`` draw, as FCDD's), drawn afresh at every access;
* ``offline`` (FCDD's ``--offline-supervision``, ``_generate_artificial_anomalies_train_set``): the set
  holds the N images and N anomalies, anomaly k made from image k once for the whole run. Here anomaly k
  is made again at each access from a generator seeded by (seed, k), which gives the same anomaly every
  epoch without storing the set.

On the tensor data path (``data.backend: tensor|auto``, the decoded uint8 images augmented per batch)
``online`` is :class:`RawBatchSupervision`: the same rule applied per sample to the raw decoded batch,
before the batched augmentation (:class:`~openood_ext.datasets.batch_source.TensorBatchSource`'s
``raw_stage``); the trainer decides which of the two a run gets
(:meth:`~openood_ext.trainers.fcdd.OnlineSupervision.raw_batch_stage`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, Literal, get_args

import numpy as np
import torch
from PIL import Image

from ..datasets.transforms import PairedTransform, TorchNearestResize

Supervisor = Literal["batch", "online", "offline"]
SUPERVISORS = get_args(Supervisor)


class StoredImage:
    """The training set's loading step when the supervisor comes first: PIL image -> the image FCDD stores
    (``raw_size`` x ``raw_size`` by torch's nearest interpolation, or unchanged)."""

    def __init__(self, raw_size: int | None):
        self.resize = TorchNearestResize(raw_size) if raw_size else None

    def __call__(self, img):
        return self.resize(img) if self.resize is not None else img


def stored_uint8(anomalies: torch.Tensor) -> torch.Tensor:
    """A source's anomalies (float, 0..255 units) as stored pixels: clamped to [0, 255] and truncated to
    uint8, as FCDD's ``.clamp(0, 255).byte()``."""
    return anomalies.clamp(0, 255).to(torch.uint8)


def seeded(seed: int, index: int) -> torch.Generator:
    """The generator of offline anomaly ``index`` (the same anomaly every epoch)."""
    state = np.random.SeedSequence([int(seed), 0x0FF, int(index)]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) % 2**62)


class DatasetSupervision(torch.utils.data.Dataset):
    """The training set with dataset-side anomalies (see the module doc).

    Args:
        dataset: the ID training set (items ``(image, label)``; its ``transform`` is replaced by
            :class:`StoredImage`); may be a :class:`~openood_ext.datasets.repeated.RepeatedDataset`.
        source: an image source with ``corrupt255(raw [1, C, H, W] in 0..255, generator, offline=...) ->
            (anomaly, changed [1, 1, H, W])`` and ``supervisor`` ``online`` or ``offline`` (offline anomalies
            follow FCDD's offline malformed-normal rule, :func:`~.confetti.apply_offline`).
        preprocessor: ``benchmark.preprocessor`` (the training transform after the stored size).
        p: replacement probability (online).
        changed_maps: the map of an anomaly is its changed pixels (``malformed_normal_gt``), else all ones.
        seed: seeds the offline anomalies.
    """

    def __init__(self, dataset, source, preprocessor: Mapping[str, Any], p: float = 0.5,
                 changed_maps: bool = False, seed: int = 0):
        pre = dict(preprocessor)
        dataset.transform = StoredImage(pre.get("raw_size"))
        self.dataset, self.source, self.p, self.changed_maps, self.seed = dataset, source, float(p), changed_maps, seed
        self.offline = source.supervisor == "offline"
        self.paired = PairedTransform({**pre, "raw_size": None}, train=True)
        self.n = len(dataset)
        if hasattr(source, "stored_pool"):  # an outlier-image source decodes its pool here, not in each worker
            source.stored_pool()  # (a pool of large images is not decoded: each replacement reads its image)

    def __len__(self) -> int:
        return 2 * self.n if self.offline else self.n

    def labels(self) -> torch.Tensor:
        own = self.dataset.labels()
        return torch.cat([own, torch.full((self.n,), -1, dtype=torch.long)]) if self.offline else own

    def __getitem__(self, index: int):
        if self.offline:
            anomalous = index >= self.n
            generator = seeded(self.seed, index - self.n) if anomalous else None
        else:
            anomalous, generator = random.random() < self.p, None  # None: the worker's global torch RNG
        if anomalous and getattr(self.source, "reads_per_image", False):
            img, mask = self.anomaly(None, generator)  # the replaced image is not read (as FCDD's ImageNet)
            label = -1
        else:
            item = self.dataset[index % self.n]
            if item is None:  # an unreadable image skipped by the loader
                return None
            img, label = item
            if anomalous:
                img, mask = self.anomaly(img, generator)
                label = -1
            else:
                mask = Image.new("L", img.size, 0)
        x, m = self.paired(img, mask)
        return torch.stack([x, m.expand_as(x)]), label

    def anomaly(self, img: Image.Image | None, generator: torch.Generator | None) -> tuple[Image.Image, Image.Image]:
        """(anomaly, ground-truth map) of a stored image, both PIL at the stored size (an outlier image read
        from disk, ``source.reads_per_image``, keeps its own stored size, FCDD's large outlier images, and
        needs no ``img``)."""
        if getattr(self.source, "reads_per_image", False):
            out = self.source.stored_outlier(generator)
            return out, Image.new("L", out.size, 255)
        arr = np.asarray(img)
        raw = torch.from_numpy(arr.copy()).float()
        raw = (raw[None] if raw.dim() == 2 else raw.permute(2, 0, 1))[None]
        out, changed = self.source.corrupt255(raw, generator, offline=self.offline)
        out = stored_uint8(out[0])
        out = out[0] if arr.ndim == 2 else out.permute(1, 2, 0)
        mask = changed[0, 0] if self.changed_maps else torch.ones(arr.shape[:2])
        return Image.fromarray(out.numpy(), mode=img.mode), Image.fromarray((mask > 0).to(torch.uint8).numpy() * 255, mode="L")


class RawBatchSupervision:
    """FCDD's online supervisor on the tensor data path: ``(raw, g) -> (raw', anomalous)`` on a decoded
    uint8 batch [B, C, H, W] *before* the batched augmentation (the images' crop, flip, jitter, noise and
    normalisation then act on the anomalies as on the normal images, as in :class:`DatasetSupervision`).

    Each sample is replaced with probability ``p`` by the anomaly ``source.corrupt255`` makes from it,
    stored as uint8 (:func:`stored_uint8`); ``anomalous`` [B] (bool) says which. The draws come from the
    batch source's generator ``g`` (one resumable stream): B uniforms for the replacement, then one seed
    for a CPU generator that the source draws the anomalies from (its blob and noise code runs on the
    CPU). The per-image path draws from Python's and the loader worker's global RNGs instead, so the two
    paths share the distributions, not the draws; with the same replacement and the same anomaly they
    give the same stored image.
    """

    def __init__(self, source, p: float = 0.5):
        if not hasattr(source, "corrupt255"):
            raise TypeError(f"{type(source).__name__} has no corrupt255: it cannot make anomalies before the transform")
        self.source, self.p = source, float(p)

    def __call__(self, raw: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        anomalous = (torch.rand(len(raw), generator=g, device=g.device) < self.p).to(raw.device)
        seed = int(torch.randint(0, 2**62, (), generator=g, device=g.device))
        picked = anomalous.nonzero().flatten()
        if len(picked):
            made, _ = self.source.corrupt255(raw[picked].float().cpu(), torch.Generator().manual_seed(seed))
            raw = raw.clone()
            raw[picked] = stored_uint8(made).to(raw.device)
        return raw, anomalous

    def __repr__(self) -> str:
        return f"RawBatchSupervision(p={self.p}, {type(self.source).__name__})"
