"""``benchmark.preprocessor`` as a batched tensor pipeline (:mod:`.batch_transforms`), or the reason it
cannot be one (the run then keeps the per-image PIL path, :mod:`.transforms`).

The per-image path is ``Resize(resize) -> CenterCrop(image_size) -> [train_augment on PIL] -> ToTensor ->
[gaussian_noise] -> Normalize``. The first two steps are deterministic, so the decoded-image cache
(:mod:`.decoded_cache`) stores their output, produced by the same PIL code; the rest runs here on whole
batches. Supported ``train_augment`` entries: the keys of :data:`TENSOR_AUGMENTS` (each builds its
op from the same preprocessor keys as :func:`.transforms.build_transform`; a new PIL augmentation gets
its tensor op by one entry there); anything else (or ``train_crop: random``) keeps the PIL path, and
:func:`unsupported` names it. A benchmark whose ``dataset`` was wrapped with an extra per-image transform
(EOE's Fourier filter, ``pipelines/ad/data.py``) declares its batched counterpart in
``benchmark.train_batch_ops`` (applied after the pipeline), or keeps the PIL path.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from . import batch_transforms as bt
from .transforms import image_mode

def _jitter(pre: Mapping[str, Any]) -> bt.ColorJitter:
    j = float(pre.get("jitter", 0.01))
    return bt.ColorJitter(j, j, j, j)


def _resized_crop(pre: Mapping[str, Any]) -> bt.ResizedCrop:
    scale = tuple(float(v) for v in pre.get("resized_crop_scale", [0.08, 1.0]))
    mode = {"nearest": "nearest", "bicubic": "bicubic"}.get(str(pre.get("interpolation", "bilinear")), "bilinear")
    return bt.ResizedCrop(int(pre.get("image_size", 32)), scale=scale, mode=mode)


#: ``train_augment`` name -> its batched op, built from the preprocessor (the PIL path's keys)
TENSOR_AUGMENTS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "random_crop": lambda pre: bt.PadCrop(int(pre.get("image_size", 32)), int(pre.get("crop_padding", 4))),
    "hflip": lambda pre: bt.HFlip(),
    "color_jitter": _jitter,
    "gaussian_noise": lambda pre: bt.GaussianNoise(float(pre.get("noise_std", 0.001))),
    "random_rotation": lambda pre: bt.Rotate(float(pre.get("rotation_degrees", 10))),  # nearest, zero fill
    "random_resized_crop": _resized_crop,
}
#: ops the PIL path applies to the tensor after ToTensor (after every PIL augmentation, whatever the order)
TENSOR_STEPS = ("gaussian_noise",)


def geometry(pre: Mapping[str, Any]) -> dict:
    """The deterministic PIL steps the cache applies before storing pixels (part of its key)."""
    size = int(pre.get("image_size", 32))
    return {"resize": int(pre.get("resize", size)), "image_size": size, "mode": image_mode(pre),
            "interpolation": str(pre.get("interpolation", "bilinear"))}


def unsupported(pre: Mapping[str, Any], train: bool) -> str | None:
    """Why ``pre`` cannot run as a tensor pipeline (naming the transform), or None when it can."""
    if train and pre.get("train_crop", "center") != "center":
        return f"benchmark.preprocessor.train_crop: {pre.get('train_crop')} (a random crop of the resized image)"
    if pre.get("gcn"):
        return "benchmark.preprocessor.gcn (per-image global contrast normalisation)"
    if pre.get("raw_size"):
        return "benchmark.preprocessor.raw_size (images stored at another size first, as FCDD's MVTec-AD)"
    if train:
        for aug in pre.get("train_augment", []) or []:
            if aug not in TENSOR_AUGMENTS:
                return f"benchmark.preprocessor.train_augment: {aug}"
    return None


def tensor_pipeline(pre: Mapping[str, Any], train: bool = False) -> bt.BatchPipeline:
    """The ops after the cache's stored pixels (call :func:`unsupported` first)."""
    channels = int(pre.get("channels", 3))
    augments = list(pre.get("train_augment", []) or []) if train else []
    ops = [TENSOR_AUGMENTS[a](pre) for a in augments if a not in TENSOR_STEPS]
    ops += [TENSOR_AUGMENTS[a](pre) for a in augments if a in TENSOR_STEPS]
    mean, std = list(pre.get("mean", [0.5] * channels)), list(pre.get("std", [0.5] * channels))
    return bt.BatchPipeline([*ops, bt.Normalize(mean, std)])
