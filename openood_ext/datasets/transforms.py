"""Preprocessing built from config (OpenOOD's train/test transforms per benchmark).

Config keys (``benchmark.preprocessor``)::

    image_size: 32          # final side length
    resize: 32              # shorter side before cropping (default: image_size)
    channels: 3             # 3 -> RGB, 1 -> grayscale (images are converted, never rejected)
    mean: [0.4914, 0.4822, 0.4465]
    std: [0.2470, 0.2435, 0.2616]
    train_augment: [random_crop, hflip]   # random_crop pads by 4 (crop_padding) like OpenOOD
    crop_padding: 4
    # EOE's CIFAR-10 augmentation: [color_jitter, hflip, random_crop, gaussian_noise]
    jitter: 0.01            # color_jitter: brightness = contrast = saturation = hue
    noise_std: 0.001        # gaussian_noise: x + noise_std * N(0, 1) on the [0, 1] tensor, before Normalize
    # VMDLS's MNIST augmentation: [random_rotation, random_resized_crop]
    rotation_degrees: 10    # random_rotation: angle ~ U[-d, d], empty corners filled with 0 (black)
    resized_crop_scale: [0.08, 1.0]   # random_resized_crop: area fraction range (VMDLS: [0.95, 1.0]); the
                            # aspect ratio range is torchvision's default [3/4, 4/3]; output image_size
    train_crop: center      # training images: centre crop after resizing, or random (EOE's ImageNet-30:
                            # Resize 256 + RandomCrop 224)
    interpolation: bilinear
"""

from __future__ import annotations

from typing import Any, Mapping

from torchvision import transforms as T

from ..errors import ConfigError

_AUGMENTS = ("random_crop", "hflip", "color_jitter", "gaussian_noise", "random_rotation", "random_resized_crop")


class GaussianNoise:
    """x + std * N(0, 1) on a tensor (EOE's ``Lambda(lambda x: x + 0.001 * torch.randn_like(x))``)."""

    def __init__(self, std: float):
        self.std = float(std)

    def __call__(self, x):
        import torch
        return x + self.std * torch.randn_like(x)

    def __repr__(self) -> str:
        return f"GaussianNoise(std={self.std})"


def _scale_range(value) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        low = high = float("nan")
    if not 0 < low <= high <= 1:
        raise ConfigError(f"benchmark.preprocessor.resized_crop_scale: expected [low, high] with 0 < low <= high <= 1, "
                          f"got {value!r}")
    return low, high


def image_mode(pre: Mapping[str, Any]) -> str:
    channels = int(pre.get("channels", 3))
    if channels not in (1, 3):
        raise ConfigError(f"benchmark.preprocessor.channels must be 1 or 3, got {channels}")
    return "RGB" if channels == 3 else "L"


def build_transform(pre: Mapping[str, Any], train: bool = False):
    """torchvision transform PIL image -> float tensor [channels, image_size, image_size]."""
    size = int(pre.get("image_size", 32))
    resize = int(pre.get("resize", size))
    channels = int(pre.get("channels", 3))
    mean, std = list(pre.get("mean", [0.5] * channels)), list(pre.get("std", [0.5] * channels))
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(f"benchmark.preprocessor: mean/std need {channels} values, got {mean} / {std}")
    try:
        interp = T.InterpolationMode(pre.get("interpolation", "bilinear"))
    except ValueError:
        raise ConfigError(f"benchmark.preprocessor.interpolation: unknown mode {pre.get('interpolation')!r}") from None
    train_crop = pre.get("train_crop", "center")
    if train_crop not in ("center", "random"):
        raise ConfigError(f"benchmark.preprocessor.train_crop: expected center or random, got {train_crop!r}")
    crop = T.RandomCrop(size) if train and train_crop == "random" else T.CenterCrop(size)
    steps, tensor_steps = [T.Resize(resize, interpolation=interp), crop], []
    if train:
        for aug in pre.get("train_augment", []) or []:
            if aug == "random_crop":
                steps.append(T.RandomCrop(size, padding=int(pre.get("crop_padding", 4))))
            elif aug == "hflip":
                steps.append(T.RandomHorizontalFlip())
            elif aug == "color_jitter":
                j = float(pre.get("jitter", 0.01))
                steps.append(T.ColorJitter(brightness=j, contrast=j, saturation=j, hue=j))
            elif aug == "random_rotation":
                steps.append(T.RandomRotation(float(pre.get("rotation_degrees", 10)), fill=0))
            elif aug == "random_resized_crop":
                steps.append(T.RandomResizedCrop(size, scale=_scale_range(pre.get("resized_crop_scale", [0.08, 1.0])),
                                                 interpolation=interp))
            elif aug == "gaussian_noise":
                tensor_steps.append(GaussianNoise(float(pre.get("noise_std", 0.001))))
            else:
                raise ConfigError(f"benchmark.preprocessor.train_augment: unknown '{aug}' (known: {', '.join(_AUGMENTS)})")
    steps += [T.ToTensor(), *tensor_steps, T.Normalize(mean, std)]
    return T.Compose(steps)
