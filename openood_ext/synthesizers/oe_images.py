"""Outlier exposure from real images: an image list, a folder, or a named split of the benchmark."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

from ..datasets.data_settings import DataSettings
from ..datasets.decoded_cache import DecodedCache, NotSmall
from ..datasets.imglist import ImglistDataset, ImglistEntry, SkipCounter
from ..datasets.tensor_recipe import geometry, tensor_pipeline, unsupported
from ..datasets.transforms import PairedTransform, TorchNearestResize, build_transform, image_mode
from ..errors import ConfigError, DataError
from ..schema import NonNegativeInt, PositiveInt
from .base import OutlierSource, rank_key
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


def entry_classes(entries) -> list:
    """The class of every image-list entry: its label when the list carries labels (>= 0), else the
    name of its parent folder (``texture/banded/x.jpg`` -> ``texture/banded``)."""
    if entries and all(e.label >= 0 for e in entries):
        return [int(e.label) for e in entries]
    return [str(Path(e.path).parent) for e in entries]


class MaskedImglistDataset(ImglistDataset):
    """Items (image tensor, ground-truth mask [1, H, W] in {0, 1}) of a benchmark split with masks
    (``bench.load_mask``); image and mask share the random geometry, masks resized nearest-neighbour."""

    def __init__(self, imglist, data_root, pre, train: bool, mode: str, load_mask, on_bad_image: str = "error"):
        super().__init__(imglist, data_root, None, mode, on_bad_image, -1)
        self.paired, self.load_mask = PairedTransform(pre, train), load_mask

    def __getitem__(self, index: int):
        from PIL import Image
        entry = self.entries[index]
        image = self.image_or_skip(entry)
        if image is None:
            return None
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
    ``subset_key``, so the subset is drawn anew for every class x seed, as EOE does). ``limit_classes: K``
    (EOE's ``oe_limit_classes``) first keeps the images of K classes drawn at random (seeded like ``limit``;
    an image's class is its label in the list, or its parent folder when the list carries no labels, as
    DTD's ``texture/<class>/...``), then ``limit`` draws among them. Per epoch the pool is reshuffled with
    a generator seeded by (seed, epoch), so a resumed run draws the same outliers. Under torchrun the epoch's
    stream is dealt out by rank (rank r takes batches r, r + W, ...), so the ranks draw different images and
    together cover W times as much of the pool per epoch as one process.

    ``batch_size`` defaults to the ID batch size, and then every step pairs exactly as many outliers as
    the ID batch holds: the short last batch of an epoch (e.g. 8 normals) gets 8 outliers, the rest of
    that outlier batch is dropped (EOE's ``BalancedConcatLoader`` cuts the OE batch to the normal batch
    the same way). An explicit ``batch_size`` always draws that many. ``order`` (``cycle`` or EOE's
    ``published``) says how an epoch's outliers are drawn from the pool (:meth:`epoch_indices`).
    Output: float tensor [n, C, H, W] on the device.

    With ``data.backend: tensor`` (the ID images on the tensor path, :meth:`use_tensor_path`), the
    outlier images are decoded once into the same decoded-image cache, held on the training device and
    augmented per batch there, with a generator seeded by (seed, epoch); the drawn indices are the same.

    ``supervisor``: where the outliers enter (FCDD's trainers, ``supervise_mode: noise``). ``batch``
    (default): drawn by the engine, through the training transform of their own, as above. ``online``:
    FCDD's ``OnlineSupervisor`` with an outlier-exposure set (``noise_mode: cifar100``): a training image
    is replaced by an outlier image *stored as the ID images are* (the ID benchmark's mode, resize and
    centre crop, uint8) before the ID training transform, which then acts on it as on a normal image
    (:mod:`.supervisor`; :meth:`corrupt255`). FCDD cycles through a shuffled outlier loader; here each
    replacement draws one pooled image uniformly (the same image distribution; ``order`` is not used).
    A pool of small images (the recipe's stored size and every pooled image within ``data.max_side``) is
    decoded once and held in memory (:meth:`stored_pool`); a pool of large images (FCDD's ImageNet-22k)
    is never decoded as a whole: each replacement reads its one drawn image from disk
    (:meth:`stored_outlier`; an unreadable one follows ``benchmark.on_bad_image``: ``skip`` draws another).
    FCDD's CIFAR-100 outliers are resized in RGB and then made grey; ours are made grey (the ID mode) and
    then resized, as the ID images; ``resize_in_rgb: true`` takes FCDD's order (a grey ID recipe only).
    """

    kind = "images"

    def __init__(self, imglist: str | None = None, folder: str | None = None, split: str | None = None,
                 image_dir: str | None = None, limit: NonNegativeInt | None = None,
                 batch_size: PositiveInt | None = None, augment: bool = True,
                 limit_classes: PositiveInt | None = None, order: Literal["cycle", "published"] = "cycle",
                 masks: bool | None = None, supervisor: Literal["batch", "online"] = "batch",
                 resize_in_rgb: bool = False):
        if limit == 0:  # allowed by the hint so that the reason can be said here
            raise ConfigError("trainer.outliers.limit: 0 leaves no outlier images, but this trainer draws outliers "
                              "from them; give a limit >= 1 or null (all), or use a trainer without outliers "
                              "(e.g. eoe_dsvdd) and remove trainer.outliers")
        self.imglist, self.folder, self.split_name = imglist, folder, split
        self.image_dir, self.limit, self.batch_size, self.augment = image_dir, limit, batch_size, bool(augment)
        self.limit_classes, self.order = limit_classes, order
        self._iter = None
        self._tensor = None  # (uint8 images on the device, BatchPipeline) on the tensor path
        self.masks, self.last_masks = masks, None
        self.supervisor = supervisor
        self._stored = None  # the pooled images as stored ID pixels (uint8, CPU), for supervisor: online
        self.resize_in_rgb = bool(resize_in_rgb)
        self.max_side = DataSettings.max_side  # the run's data.max_side once use_data_settings has it
        self.reads_per_image = False  # supervisor: online with large images: one file read per replacement

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
        key = getattr(self.ctx, "subset_key", None)
        rng = np.random.default_rng([self.ctx.seed, 0x0E] + ([] if key is None else [key]))
        candidates = np.arange(len(self.dataset))
        self.classes = None
        if self.limit_classes is not None:
            labels = entry_classes(self.dataset.entries)
            names = sorted(set(labels), key=str)
            if self.limit_classes > len(names):
                raise ConfigError(f"trainer.outliers.limit_classes: {self.limit_classes} is larger than the number "
                                  f"of classes of the outlier set ({len(names)} in {self._where()})")
            self.classes = sorted((names[i] for i in rng.permutation(len(names))[:self.limit_classes]),
                                  key=str)
            keep = set(self.classes)
            candidates = np.array([i for i, c in enumerate(labels) if c in keep])
        if self.limit is not None and self.limit > len(candidates):
            within = f" of the {self.limit_classes} drawn classes" if self.classes is not None else ""
            raise ConfigError(f"trainer.outliers.limit: {self.limit} is larger than the outlier set{within} "
                              f"({len(candidates)} images in {self._where()})")
        self.pool = np.sort(rng.choice(candidates, self.limit, replace=False)) if self.limit else candidates

    def describe(self) -> str:
        n = len(self.dataset)
        size = f"{len(self.pool)} of {n}" if len(self.pool) < n else f"{n}"
        if self.classes is not None:
            size += f" (classes {', '.join(map(str, self.classes))})"
        per_step = f"{self.out_batch} per step" if self.batch_size else \
            f"as many per step as the ID batch ({self.out_batch})"
        if self.dataset_side:
            per_step = "replacing training images before their transform (supervisor: online" + \
                ("; one image read per replacement)" if self.reads_per_image else ")")
        return f"oe_images: {size} images from {self._where()}, {per_step}"

    def label(self) -> str:
        where = Path(self.imglist).name if self.imglist else Path(self.folder).name if self.folder else \
            f"{self.ctx.benchmark.name}:{self.split_name or 'oe'}"
        return f"oe_images({where}{f', limit={self.limit}' if self.limit else ''})"

    # ------------------------------------------------------------------ drawing
    def epoch_indices(self, epoch: int) -> list[list[int]]:
        """This rank's batches of dataset indices for ``epoch``: one stream for all ranks, dealt out batch by
        batch under torchrun (a single process takes all of it).

        ``order: cycle`` (default): reshuffled copies of the pool one after the other, so every pooled
        image is used equally often. ``order: published`` (EOE's ``BalancedConcatLoader``): a pool smaller
        than the ID training set is repeated ceil(N / |pool|) times and the whole repetition shuffled at
        once (an image may come back within a batch); a pool of 10,000 images or more is sampled with
        replacement (EOE's ``RandomSampler(replacement=True)``).
        """
        rng = np.random.default_rng([self.ctx.seed, 0x0E, epoch])
        rank, world = int(getattr(self.ctx, "rank", 0)), int(getattr(self.ctx, "world_size", 1))
        need = self.ctx.steps_per_epoch * self.out_batch * world
        if self.order == "published":
            n_id = getattr(self.ctx, "train_size", None) or need
            pool = np.tile(self.pool, -(-n_id // len(self.pool))) if len(self.pool) < n_id else self.pool
            stream = rng.choice(pool, len(pool), replace=True) if len(self.pool) >= 10_000 else rng.permutation(pool)
            stream = stream[:need]
        else:
            reps = -(-need // len(self.pool))
            stream = np.concatenate([rng.permutation(self.pool) for _ in range(reps)])[:need]
        batches = [stream[i:i + self.out_batch].tolist() for i in range(0, len(stream), self.out_batch)]
        return batches[rank::world]

    def use_tensor_path(self, data, device, log) -> bool:
        """Draw from the decoded-image cache (``data``: the run's DataSettings) on ``device``; False (one
        log line naming why) when the recipe or the images need the per-image path."""
        log = log or logging.getLogger("openood_ext")
        pre = self.ctx.benchmark.preprocessor
        reason = "ground-truth masks travel with the images" if self.masks else unsupported(pre, self.augment)
        if reason is None:
            try:
                decoded = DecodedCache(data.cache_root(), data.max_side, log).load(self.dataset, geometry(pre))
                if decoded.skipped:
                    reason = f"{decoded.skipped} unreadable outlier image(s) skipped"
            except NotSmall as exc:
                reason = str(exc)
        if reason is not None:
            log.info("outlier images: per-image PIL path (%s)", reason)
            return False
        where = torch.device(device) if data.on_device else torch.device("cpu")
        self._tensor = (decoded.images.to(where), tensor_pipeline(pre, train=self.augment))
        self._iter = None
        return True

    # ------------------------------------------------------------------ before the transform (online)
    def use_data_settings(self, data) -> None:
        """The run's ``data:`` settings (:class:`~openood_ext.datasets.data_settings.DataSettings`): its
        ``max_side`` decides whether ``supervisor: online`` holds the pool decoded (:meth:`stored_pool`)."""
        self.max_side = int(data.max_side)

    def stored_pool(self) -> torch.Tensor | None:
        """The pooled outlier images as the ID images are stored (uint8 [P, C, H, W] on the CPU: the ID
        benchmark's mode, resize and centre crop), decoded once (the tensor path's decoded set when
        there is one); None, and ``reads_per_image`` set, when the recipe's stored size or a pooled image
        is larger than ``data.max_side`` (each replacement then reads its image, :meth:`stored_outlier`)."""
        if self._stored is None and not self.reads_per_image:
            log = logging.getLogger("openood_ext")
            if self._tensor is not None and not self.resize_in_rgb:
                pixels = self._tensor[0].cpu()
            else:
                pre = self.ctx.benchmark.preprocessor
                rgb = self.resize_in_rgb and image_mode(pre) == "L"
                dataset = self.dataset
                if rgb:  # FCDD's OECifar100: resized in RGB, made grey afterwards
                    dataset = copy.copy(self.dataset)
                    dataset.mode = "RGB"
                try:
                    decoded = DecodedCache(None, self.max_side, log).load(
                        dataset, {**geometry(pre), "mode": dataset.mode})
                except NotSmall as exc:
                    self.reads_per_image = True
                    log.info("outlier images (supervisor: online): one image read from disk per replacement (%s)",
                             exc)
                    return None
                if decoded.skipped:
                    raise DataError(f"outlier-exposure set ({self._where()}): {decoded.skipped} unreadable image(s) "
                                    f"skipped; supervisor: online needs every pooled image (or use supervisor: batch)")
                pixels = grey_after_resize(decoded.images) if rgb else decoded.images
            self._stored = pixels[torch.as_tensor(self.pool, dtype=torch.long)]
        return self._stored

    def stored_outlier(self, generator: torch.Generator | None) -> Image.Image:
        """One pooled outlier image drawn uniformly (``generator`` None: the global torch RNG) and read
        from its file, stored as FCDD stores its large outlier images before the ID training transform:
        the ID mode, then ``raw_size`` x ``raw_size`` (torch nearest, as the ID images) when the recipe
        stores its images at ``raw_size``, else the shorter side resized to ``preprocessor.resize``
        (``interpolation``, default bilinear: FCDD's ``OEImageNet22k``, ``Resize(256)``; the aspect ratio
        kept, no crop). An unreadable image follows ``on_bad_image``: a DataError naming it, or (``skip``)
        another draw."""
        pre = self.ctx.benchmark.preprocessor
        rgb = self.resize_in_rgb and image_mode(pre) == "L"
        for _ in range(_MAX_REDRAWS):
            entry = self.dataset.entries[int(self.pool[int(torch.randint(0, len(self.pool), (), generator=generator))])]
            if rgb:  # FCDD's OECifar100 order: resized in RGB, made grey afterwards
                mode, self.dataset.mode = self.dataset.mode, "RGB"
                try:
                    img = self.dataset.image_or_skip(entry)
                finally:
                    self.dataset.mode = mode
            else:
                img = self.dataset.image_or_skip(entry)
            if img is not None:
                raw_size = pre.get("raw_size")
                size = int(pre.get("resize", pre.get("image_size", 32)))
                img = TorchNearestResize(int(raw_size))(img) if raw_size else \
                    T.Resize(size, interpolation=T.InterpolationMode(str(pre.get("interpolation", "bilinear"))))(img)
                return img.convert("L") if rgb else img
        raise DataError(f"outlier-exposure set ({self._where()}): {_MAX_REDRAWS} unreadable images drawn in a row "
                        f"(on_bad_image: skip)")

    def corrupt255(self, raw: torch.Tensor, generator: torch.Generator | None,
                   offline: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, C, H, W] (0..255) -> (B pooled outlier images in their stored form, float 0..255;
        maps [B, 1, H, W] of ones): FCDD's ``noise`` supervision with an outlier-exposure set, the
        outlier replacing the image. ``generator`` None draws from the global torch RNG. With large
        images (``reads_per_image``) each is read (:meth:`stored_outlier`) and centre-cropped to the
        batch's H x W, as the tensor path's decoded ID images are."""
        maps = torch.ones(len(raw), 1, *raw.shape[-2:])
        pool = self.stored_pool()
        if pool is None:
            crop = T.CenterCrop(tuple(raw.shape[-2:]))
            read = torch.stack([_chw(np.asarray(crop(self.stored_outlier(generator)), dtype=np.uint8))
                                for _ in range(len(raw))])
            if read.shape[1] != raw.shape[1]:
                raise ConfigError(f"trainer.outliers.supervisor: online: the outlier images are read with "
                                  f"{read.shape[1]} channel(s), the training images have {raw.shape[1]}")
            return read.float(), maps
        if tuple(pool.shape[1:]) != tuple(raw.shape[1:]):
            raise ConfigError(f"trainer.outliers.supervisor: online: the outlier images are stored as "
                              f"{tuple(pool.shape[1:])}, the training images as {tuple(raw.shape[1:])} (C, H, W)")
        pick = torch.randint(0, len(pool), (len(raw),), generator=generator)
        return pool[pick].float(), maps

    def on_epoch_start(self, epoch: int) -> None:
        if self.dataset_side:  # not drawn by the engine: its images enter through corrupt255
            return
        entropy = [self.ctx.seed, epoch, *rank_key(self.ctx)]  # augmentation differs per rank
        seed = int(np.random.default_rng(entropy).integers(2**62))
        if self._tensor is not None:
            images = self._tensor[0]
            self._generator = torch.Generator(device=images.device).manual_seed(seed)
            self._iter = (torch.as_tensor(idx, device=images.device) for idx in self.epoch_indices(epoch))
            return
        # one loader for the run, its batches swapped per epoch: worker processes persist between epochs
        # instead of being spawned again (and their first batches waited for) at every epoch start
        if getattr(self, "_loader", None) is None:
            self._batches = _EpochBatches()
            workers = self.ctx.num_workers
            self._loader = torch.utils.data.DataLoader(
                self.dataset, batch_sampler=self._batches, num_workers=workers,
                collate_fn=collate_masked if self.masks else SkipCounter(),
                generator=torch.Generator(), persistent_workers=workers > 0,
                pin_memory=torch.device(self.ctx.device).type == "cuda")
        self._loader.generator.manual_seed(seed)
        self._batches.batches = self.epoch_indices(epoch)
        self._iter = iter(self._loader)

    def _short(self, rows: torch.Tensor, batch) -> torch.Tensor:
        """As many outliers as normals, also in the short last batch (unless ``batch_size`` is given)."""
        if self.batch_size is None and batch is not None and len(batch.images) < len(rows):
            return rows[:len(batch.images)]
        return rows

    def draw(self, batch) -> torch.Tensor:
        if self._iter is None:
            self.on_epoch_start(batch.epoch)
        try:
            data = next(self._iter)
        except StopIteration:  # more ID batches than planned (should not happen): start over
            self.on_epoch_start(batch.epoch)
            data = next(self._iter)
        if self._tensor is not None:  # a batch of indices into the decoded images
            pixels, pipeline = self._tensor
            images = pipeline(pixels[self._short(data, batch)], self._generator)
        else:
            images = self._short(data[0], batch)
            if self.masks:
                self.last_masks = self._short(data[1], batch).to(self.ctx.device, non_blocking=True)
        return images.to(self.ctx.device, non_blocking=True)


_MAX_REDRAWS = 100  # unreadable outlier images in a row before a skip-mode draw gives up


def _chw(arr: np.ndarray) -> torch.Tensor:
    """uint8 [H, W] or [H, W, C] -> tensor [C, H, W]."""
    return torch.from_numpy((arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)).copy())


def grey_after_resize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 RGB images [N, 3, H, W] -> [N, 1, H, W] by PIL's ``convert("L")`` (ITU-R 601-2 luma), as
    torchvision's ``Grayscale`` after FCDD's resize."""
    grey = [_chw(np.asarray(Image.fromarray(np.ascontiguousarray(p.permute(1, 2, 0).numpy())).convert("L")))
            for p in pixels]
    return torch.stack(grey) if grey else torch.empty((0, 1, *pixels.shape[2:]), dtype=torch.uint8)


class _EpochBatches:
    """A batch sampler whose batches are replaced at each epoch start (see ``on_epoch_start``)."""

    def __init__(self):
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
