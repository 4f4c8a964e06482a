"""Training batches of large JPEG images decoded a batch at a time on the GPU: the path of benchmarks whose
images are too large for the decoded-image cache (``data.max_side``; ImageNet-style lists) when training
on CUDA.

The per-image path decodes and resizes every image with PIL in the loader's worker processes. Here the
workers only read each file's bytes; the training process hands a batch of them to
``torchvision.io.decode_jpeg(list, device='cuda')`` (nvJPEG) in one call, resizes each image on the device
(shorter side to ``resize``, antialiased) and centre-crops it to ``image_size`` (the recipe's
deterministic geometry, :func:`.tensor_recipe.geometry`), stacks the uint8 batch and runs the recipe's
batched ops (:func:`.tensor_recipe.tensor_pipeline`: augmentation, normalisation) there.

What differs from the per-image path: pixels, by a few 1/255 (nvJPEG's and libjpeg's IDCTs, torch's
antialiased resize and PIL's), not the recipe; shuffling and augmentation draw from one seeded CPU
generator (``generator``, saved with the training state, so a resumed run repeats its batches). A file
that the batched decoder rejects is decoded alone, and one it still rejects is read by PIL (a CMYK JPEG,
say); an image PIL cannot read either is reported exactly as the per-image path reports it (file and list
line), or skipped and counted under ``on_bad_image: skip``. Under torchrun each rank reads its
``DistributedSampler`` share.

:func:`jpeg_obstacle` says why a split cannot take this path (not training on CUDA, a file that is not a
JPEG by its name). The CUDA path has not run on a GPU in this project; the tests run the same calls with
``device='cpu'`` (torchvision's CPU decoder takes the same list).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms.v2 import functional as F2

from .imglist import ImglistDataset

JPEG_SUFFIXES = (".jpg", ".jpeg")


def jpeg_obstacle(dataset: ImglistDataset, device: torch.device | str) -> str | None:
    """Why ``dataset`` cannot be decoded in batches on ``device`` (None: it can)."""
    if torch.device(device).type != "cuda":
        return "not training on CUDA (batched JPEG decoding runs on the GPU)"
    other = next((e for e in dataset.entries if not e.path.lower().endswith(JPEG_SUFFIXES)), None)
    if other is not None:
        return f"{other.path} (listed at {dataset.imglist}:{other.line}) is not a .jpg/.jpeg file"
    return None


class EncodedImages(torch.utils.data.Dataset):
    """Items ``(file bytes uint8 [L] or None when unreadable, label, list index)`` of an image list."""

    def __init__(self, dataset: ImglistDataset):
        self.dataset = dataset
        self.labels = dataset.labels()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        entry = self.dataset.entries[index]
        try:
            data = read_file(str(self.dataset.data_root / entry.path))
        except (RuntimeError, OSError):
            data = None  # reported (or skipped) by the PIL reader in decode_batch, as the per-image path does
        return data, int(self.labels[index]), index


def _as_list(batch):
    return batch


def _resize_crop(img: torch.Tensor, geometry: dict) -> torch.Tensor:
    interp = F2.InterpolationMode(geometry["interpolation"])
    img = F2.resize(img, [geometry["resize"]], interpolation=interp, antialias=True)
    return F2.center_crop(img, [geometry["image_size"]] * 2)


def _pil_pixels(dataset: ImglistDataset, index: int, device) -> torch.Tensor | None:
    """The image as PIL reads it (uint8 [C, H, W] on ``device``); None when skipped; DataError as the PIL path."""
    img = dataset.image_or_skip(dataset.entries[index])
    if img is None:
        return None
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy()).to(device)


def decode_batch(dataset: ImglistDataset, items, geometry: dict, device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(uint8 [B', C, S, S] on ``device``, labels [B'], number skipped) of ``items`` from :class:`EncodedImages`."""
    mode = ImageReadMode.RGB if geometry["mode"] == "RGB" else ImageReadMode.GRAY
    datas = [d for d, _, _ in items]
    decoded: list[torch.Tensor | None]
    try:
        if any(d is None for d in datas):
            raise RuntimeError("a file could not be read")
        decoded = list(decode_jpeg(datas, mode=mode, device=device))
    except RuntimeError:  # find the culprit(s): each alone, then through PIL
        decoded = []
        for data, _, index in items:
            try:
                decoded.append(decode_jpeg(data, mode=mode, device=device) if data is not None else None)
            except RuntimeError:
                decoded.append(None)
            if decoded[-1] is None:
                decoded[-1] = _pil_pixels(dataset, index, device)
    kept = [i for i, img in enumerate(decoded) if img is not None]
    size = geometry["image_size"]
    channels = 3 if geometry["mode"] == "RGB" else 1
    images = (torch.stack([_resize_crop(decoded[i], geometry) for i in kept]) if kept
              else torch.empty(0, channels, size, size, dtype=torch.uint8, device=device))
    labels = torch.as_tensor([items[i][1] for i in kept], dtype=torch.long)
    return images, labels, len(items) - len(kept)


class JpegBatchSource:
    """Shuffled, augmented training batches of a JPEG image list, decoded per batch on ``device``.

    What the engine asks of a training loader: ``len`` (batches per epoch), iteration yielding
    ``(images on device, labels, n_skipped)``, ``dataset`` and ``generator`` (shuffle and augmentation;
    saved and restored with the training state), ``sampler`` under torchrun (``set_epoch``).

    Args:
        dataset: the training split (its entries; bad images reported through it).
        geometry: the deterministic resize / centre crop (:func:`.tensor_recipe.geometry`).
        pipeline: uint8 batch -> float batch (the recipe's batched ops).
        batch_size, seed, device: as for :class:`~.batch_source.TensorBatchSource`.
        num_workers: processes reading the files' bytes.
        rank, world: this process's share under torchrun.
    """

    def __init__(self, dataset: ImglistDataset, geometry: dict, pipeline, batch_size: int, seed: int,
                 device: torch.device | str = "cuda", num_workers: int = 0, rank: int = 0, world: int = 1):
        self.dataset, self.geometry, self.pipeline = dataset, dict(geometry), pipeline
        self.device, self.batch_size = torch.device(device), int(batch_size)
        self.generator = torch.Generator().manual_seed(int(seed) + (7919 * rank if world > 1 else 0))
        encoded = EncodedImages(dataset)
        self.sampler = (torch.utils.data.DistributedSampler(encoded, num_replicas=world, rank=rank, shuffle=True,
                                                            seed=int(seed), drop_last=False) if world > 1 else None)
        self.loader = torch.utils.data.DataLoader(
            encoded, batch_size=self.batch_size, shuffle=self.sampler is None, sampler=self.sampler,
            generator=self.generator, num_workers=num_workers, collate_fn=_as_list, drop_last=False)

    def __len__(self) -> int:
        return len(self.loader) if self.sampler is None else math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self):
        for items in self.loader:
            images, labels, skipped = decode_batch(self.dataset, items, self.geometry, self.device)
            if len(labels) == 0:
                yield images.float(), labels, skipped
                continue
            labels = labels.to(self.device)
            yield self.pipeline(images, self.generator, labels), labels, skipped

    def __repr__(self) -> str:
        return f"JpegBatchSource({len(self.dataset)} images decoded per batch on {self.device}, {self.pipeline!r})"
