"""``benchmark.preprocessor`` as a batched tensor pipeline (:mod:`.batch_transforms`), or the reason it
cannot be one (the run then keeps the per-image PIL path, :mod:`.transforms`).

The per-image path is ``Resize(resize) -> CenterCrop(image_size) -> [train_augment on PIL] -> ToTensor ->
[gaussian_noise] -> Normalize``. The first two steps are deterministic, so the decoded-image cache
(:mod:`.decoded_cache`) stores their output, produced by the same PIL code; the rest runs here on whole
batches. Supported ``train_augment`` entries: ``random_crop``, ``hflip``, ``color_jitter``,
``gaussian_noise``; anything else (or ``train_crop: random``, a trainer's own transform, EOE's Fourier
filter on the training images) keeps the PIL path, and :func:`unsupported` names it.
"""

from __future__ import annotations

from typing import Any, Mapping

from . import batch_transforms as bt
from .transforms import image_mode

TENSOR_AUGMENTS = ("random_crop", "hflip", "color_jitter", "gaussian_noise")


def geometry(pre: Mapping[str, Any]) -> dict:
    """The deterministic PIL steps the cache applies before storing pixels (part of its key)."""
    size = int(pre.get("image_size", 32))
    return {"resize": int(pre.get("resize", size)), "image_size": size, "mode": image_mode(pre),
            "interpolation": str(pre.get("interpolation", "bilinear"))}


def unsupported(pre: Mapping[str, Any], train: bool) -> str | None:
    """Why ``pre`` cannot run as a tensor pipeline (naming the transform), or None when it can."""
    if train and pre.get("train_crop", "center") == "random":
        return "benchmark.preprocessor.train_crop: random (a random crop of the resized image)"
    ms = pre.get("ms_mode")
    if ms and float((ms or {}).get("magnitude", 0) or 0) and "train_nominal" in ((ms or {}).get("parts") or []):
        return "benchmark.preprocessor.ms_mode (EOE's Fourier filter on the training images)"
    if train:
        for aug in pre.get("train_augment", []) or []:
            if aug not in TENSOR_AUGMENTS:
                return f"benchmark.preprocessor.train_augment: {aug}"
    return None


def tensor_pipeline(pre: Mapping[str, Any], train: bool = False) -> bt.BatchPipeline:
    """The ops after the cache's stored pixels (call :func:`unsupported` first)."""
    size = int(pre.get("image_size", 32))
    channels = int(pre.get("channels", 3))
    ops: list = []
    noise = []
    if train:
        for aug in pre.get("train_augment", []) or []:
            if aug == "random_crop":
                ops.append(bt.PadCrop(size, int(pre.get("crop_padding", 4))))
            elif aug == "hflip":
                ops.append(bt.HFlip())
            elif aug == "color_jitter":
                j = float(pre.get("jitter", 0.01))
                ops.append(bt.ColorJitter(j, j, j, j))
            elif aug == "gaussian_noise":
                noise.append(bt.GaussianNoise(float(pre.get("noise_std", 0.001))))
    mean, std = list(pre.get("mean", [0.5] * channels)), list(pre.get("std", [0.5] * channels))
    return bt.BatchPipeline([*ops, *noise, bt.Normalize(mean, std)])
