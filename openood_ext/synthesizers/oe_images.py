"""Outlier exposure from real images: an image list, a folder, or a named split of the benchmark."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..datasets.imglist import ImglistDataset, ImglistEntry, SkipCounter
from ..datasets.transforms import PairedTransform, build_transform, image_mode
from ..errors import ConfigError, DataError
from ..schema import NonNegativeInt, PositiveInt
from .base import OutlierSource
from .registry import OUTLIER_SOURCES

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class FolderDataset(ImglistDataset):
    """Every image file below ``folder`` (sorted), label -1; loads and fails like :class:`ImglistDataset`."""

    def __init__(self, folder: Path, transform, mode: str, on_bad_image: str = "error"):
        self.imglist, self.data_root = folder, folder
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        self.entries = [ImglistEntry(str(p.relative_to(folder)), -1, 0) for p in files]
        self.transform, self.mode = transform, mode
        self.on_bad_image, self.label_override = on_bad_image, -1


class MaskedImglistDataset(ImglistDataset):
    """Items (image tensor, ground-truth mask [1, H, W] in {0, 1}) of a benchmark split with masks
    (``bench.load_mask``); image and mask share the random geometry, masks resized nearest-neighbour."""

    def __init__(self, imglist, data_root, pre, train: bool, mode: str, load_mask, on_bad_image: str = "error"):
        super().__init__(imglist, data_root, None, mode, on_bad_image, -1)
        self.paired, self.load_mask = PairedTransform(pre, train), load_mask

    def __getitem__(self, index: int):
        from PIL import Image
        entry = self.entries[index]
        try:
            image = self.load_image(entry)
        except DataError:
            if self.on_bad_image == "skip":
                return None
            raise
        mask = Image.fromarray(self.load_mask(entry.path, True) * 255)
        return self.paired(image, mask)


def collate_masked(batch):
    """(images, masks, n_skipped) from :class:`MaskedImglistDataset` items (None = skipped)."""
    kept = [item for item in batch if item is not None]
    if not kept:
        return torch.empty(0), torch.empty(0), len(batch)
    return torch.stack([k[0] for k in kept]), torch.stack([k[1] for k in kept]), len(batch) - len(kept)


@OUTLIER_SOURCES.register("oe_images", aliases=["oe"])
class OEImages(OutlierSource):
    """Outlier exposure (Hendrycks et al., 2019) from real images, one batch of outliers per ID batch.

    Source (the first given is used): ``imglist`` (OpenOOD-format list; paths relative to ``image_dir``,
    default the benchmark's data root), ``folder`` (every image file below it), or ``split`` (a split
    of the benchmark: ``oe``, the default, is ``benchmark.oe``; ``ood_val`` or any OOD set name also work).

    Images go through the ID *training* transform (augmentation included unless ``augment: false``)
    and the ID normalisation, converted to the ID channel count. ``limit: N`` draws N distinct images
    once per run (seeded by the run's seed) and cycles them, each copy augmented independently;
    ``masks`` (default: on for a split of a benchmark with ground-truth masks, e.g. MVTec's training
    defects) loads each image's mask too, transformed with the same geometry (nearest neighbour), and
    exposes them as ``last_masks`` [B, 1, H, W]: FCDD's ``mvtec_gt`` trains on the real defect masks;
    ``N = 1`` puts the same image in every outlier slot (the AD pipeline passes the normal class as
    ``subset_key``, so the subset is drawn anew for every class x seed, as EOE does). Per epoch the pool
    is reshuffled with a
    generator seeded by (seed, epoch), so a resumed run draws the same outliers. ``batch_size``
    defaults to the ID batch size. Output: float tensor [batch_size, C, H, W] on the device.
    """

    kind = "images"

    def __init__(self, imglist: str | None = None, folder: str | None = None, split: str | None = None,
                 image_dir: str | None = None, limit: NonNegativeInt | None = None,
                 batch_size: PositiveInt | None = None, augment: bool = True, masks: bool | None = None):
        if limit == 0:  # allowed by the hint so that the reason can be said here
            raise ConfigError("trainer.outliers.limit: 0 leaves no outlier images, but this trainer draws outliers "
                              "from them; give a limit >= 1 or null (all), or use a trainer without outliers "
                              "(e.g. eoe_dsvdd) and remove trainer.outliers")
        self.imglist, self.folder, self.split_name = imglist, folder, split
        self.image_dir, self.limit, self.batch_size, self.augment = image_dir, limit, batch_size, bool(augment)
        self._iter = None
        self.masks, self.last_masks = masks, None

    # ------------------------------------------------------------------ setup
    def _where(self) -> str:
        if self.imglist:
            return f"image list {self.imglist}"
        if self.folder:
            return f"folder {self.folder}"
        return f"benchmark split '{self.split_name or 'oe'}'"

    def setup(self, ctx) -> None:
        super().setup(ctx)
        bench = ctx.benchmark
        pre = bench.preprocessor
        transform, mode = build_transform(pre, train=self.augment), image_mode(pre)
        if self.imglist:
            root = Path(self.image_dir) if self.image_dir else bench.data_root
            self.dataset = ImglistDataset(self.imglist, root, transform, mode, bench.on_bad_image, -1) \
                if Path(self.imglist).is_file() else None
        elif self.folder:
            folder = Path(self.folder)
            self.dataset = FolderDataset(folder, transform, mode, bench.on_bad_image) if folder.is_dir() else None
        else:
            name = self.split_name or "oe"
            if name == "oe" and getattr(bench, "oe_split", None) is None:
                raise ConfigError(f"benchmark {bench.name} names no outlier-exposure set (benchmark.oe); give "
                                  f"trainer.outliers={{name: oe_images, imglist: LIST}} or folder: DIR")
            split = bench.split(name)
            self.split_obj = split
            self.dataset = None
            has_masks = bool(getattr(bench, "has_masks", False)) and callable(getattr(bench, "load_mask", None))
            if self.masks and not has_masks:
                raise ConfigError(f"trainer.outliers.masks: benchmark {bench.name} has no ground-truth masks")
            self.masks = has_masks if self.masks is None else bool(self.masks)
            if split.imglist.is_file():
                self.dataset = (MaskedImglistDataset(split.imglist, bench.image_root_of(split), pre, self.augment,
                                                     mode, bench.load_mask, bench.on_bad_image) if self.masks else
                                ImglistDataset(split.imglist, bench.image_root_of(split), transform, mode,
                                               bench.on_bad_image, -1))
        self.out_batch = self.batch_size or ctx.batch_size

    def check(self) -> None:
        """The images must be there, and ``limit`` must not exceed the pool."""
        hint = ("provide it (openood-ext data prepare <benchmark> --from ARCHIVE, or an OpenOOD data directory "
                "as benchmark.data_root) or pick another source with trainer.outliers=...")
        if self.dataset is None or len(self.dataset) == 0:
            raise DataError(f"outlier-exposure set ({self._where()}) is absent or empty; {hint}")
        first = self.dataset.entries[0]
        if not (self.dataset.data_root / first.path).exists():
            raise DataError(f"outlier-exposure set ({self._where()}): its images are not under "
                            f"{self.dataset.data_root} (first: {first.path}); {hint}")
        if self.limit is not None and self.limit > len(self.dataset):
            raise ConfigError(f"trainer.outliers.limit: {self.limit} is larger than the outlier set "
                              f"({len(self.dataset)} images in {self._where()})")
        key = getattr(self.ctx, "subset_key", None)
        rng = np.random.default_rng([self.ctx.seed, 0x0E] + ([] if key is None else [key]))
        n = len(self.dataset)
        self.pool = np.sort(rng.choice(n, self.limit, replace=False)) if self.limit else np.arange(n)

    def describe(self) -> str:
        size = f"{len(self.pool)} of {len(self.dataset)}" if self.limit else f"{len(self.dataset)}"
        return f"oe_images: {size} images from {self._where()}, {self.out_batch} per step"

    def label(self) -> str:
        where = Path(self.imglist).name if self.imglist else Path(self.folder).name if self.folder else \
            f"{self.ctx.benchmark.name}:{self.split_name or 'oe'}"
        return f"oe_images({where}{f', limit={self.limit}' if self.limit else ''})"

    # ------------------------------------------------------------------ drawing
    def epoch_indices(self, epoch: int) -> list[list[int]]:
        """The batches of dataset indices for ``epoch``: reshuffled copies of the pool, cycled."""
        rng = np.random.default_rng([self.ctx.seed, 0x0E, epoch])
        need = self.ctx.steps_per_epoch * self.out_batch
        reps = -(-need // len(self.pool))
        stream = np.concatenate([rng.permutation(self.pool) for _ in range(reps)])[:need]
        return [stream[i:i + self.out_batch].tolist() for i in range(0, need, self.out_batch)]

    def on_epoch_start(self, epoch: int) -> None:
        generator = torch.Generator().manual_seed(int(np.random.default_rng([self.ctx.seed, epoch]).integers(2**62)))
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=self.epoch_indices(epoch),
                                             num_workers=self.ctx.num_workers,
                                             collate_fn=collate_masked if self.masks else SkipCounter(),
                                             generator=generator)
        self._iter = iter(loader)

    def draw(self, batch) -> torch.Tensor:
        if self._iter is None:
            self.on_epoch_start(batch.epoch)
        try:
            data = next(self._iter)
        except StopIteration:  # more ID batches than planned (should not happen): start over
            self.on_epoch_start(batch.epoch)
            data = next(self._iter)
        if self.masks:
            self.last_masks = data[1].to(self.ctx.device, non_blocking=True)
        return data[0].to(self.ctx.device, non_blocking=True)
