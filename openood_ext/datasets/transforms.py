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
                            # Resize 256 + RandomCrop 224), or choice (FCDD's MVTec lcnaug1: per image, with
                            # p = 1/2 RandomCrop(image_size) of the resized image or Resize(image_size, nearest))
    interpolation: bilinear
    raw_size: null          # N: first resize every image to N x N with torch's nearest interpolation (FCDD
                            # stores MVTec-AD at 240 px this way); `resize` then applies to that
    # FCDD's MVTec lcnaug1 augmentations (after the crop, before LCN):
    #   jitter_choice: one of the ColorJitter(b, c, s, h) settings in `jitter_choices`, picked per image
    #   relative_noise: with p = 1/2, x + relative_noise_scale * std(x) * N(0, 1), clamped to [0, 1]
    jitter_choices: [[0.04, 0.04, 0.04, 0.04], [0.005, 0.0005, 0.0005, 0.0005]]
    relative_noise_scale: 0.1
    gcn: null               # l1: per-image global contrast normalisation (x - mean(x)) / mean|x - mean(x)|
                            # over all of C, H, W, after ToTensor (and noise), before Normalize; train and test
                            # (EOE's MVTec 'gcn-normalize', with mean/std = the normal class's GCN min / range)
"""

from __future__ import annotations

from typing import Any, Mapping

from torchvision import transforms as T

from ..errors import ConfigError

_AUGMENTS = ("random_crop", "hflip", "color_jitter", "gaussian_noise", "random_rotation", "random_resized_crop",
             "jitter_choice", "relative_noise")
TRAIN_CROPS = ("center", "random", "choice")


class GlobalContrastNorm:
    """Per-image global contrast normalisation with the L1 scale: (x - mean(x)) / mean|x - mean(x)|, the
    means over every value of the image [C, H, W] (or of each image of a batch [B, C, H, W])."""

    def __call__(self, x):
        dims = tuple(range(x.ndim - 3, x.ndim))
        centred = x - x.mean(dim=dims, keepdim=True)
        return centred / centred.abs().mean(dim=dims, keepdim=True)

    def __repr__(self) -> str:
        return "GlobalContrastNorm(l1)"


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


class RelativeNoise:
    """FCDD's MVTec noise: with p = 1/2 (``randint(0, 2)``), x + scale * std(x) * N(0, 1); clamped to [0, 1].
    Draws as FCDD does: the torch normal field first, then the on/off coin from NumPy's global RNG (which
    the DataLoader seeds in each worker), so that seeded draws give FCDD's image."""

    def __init__(self, scale: float):
        self.scale = float(scale)

    def __call__(self, x):
        import numpy as np
        import torch
        field = torch.randn_like(x)
        on = int(np.random.randint(0, 2))
        return (x + field * on * x.std() * self.scale).clamp(0, 1)

    def __repr__(self) -> str:
        return f"RelativeNoise(scale={self.scale})"


class TorchNearestResize:
    """Resize a PIL image to ``size`` x ``size`` with ``torch.nn.functional.interpolate`` (mode nearest:
    source pixel floor(i * in / out)), the way FCDD stores MVTec-AD at 240 px; PIL's nearest samples pixel
    centres and picks other pixels."""

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, img):
        import numpy as np
        import torch
        from PIL import Image
        arr = np.asarray(img)
        t = torch.from_numpy(arr.copy()).float()
        t = t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)
        out = torch.nn.functional.interpolate(t[None], (self.size, self.size))[0].byte()
        out = out[0] if arr.ndim == 2 else out.permute(1, 2, 0)
        return Image.fromarray(out.numpy(), mode=img.mode)

    def __repr__(self) -> str:
        return f"TorchNearestResize({self.size})"


def geometry(pre: Mapping[str, Any], train: bool, interpolation=None) -> list:
    """The geometric steps of :func:`build_transform` (raw size, resize, crop), shared with the masks of
    training anomalies (:class:`PairedTransform`); ``interpolation`` overrides the configured one."""
    size = int(pre.get("image_size", 32))
    resize = int(pre.get("resize", size))
    try:
        interp = interpolation or T.InterpolationMode(pre.get("interpolation", "bilinear"))
    except ValueError:
        raise ConfigError(f"benchmark.preprocessor.interpolation: unknown mode {pre.get('interpolation')!r}") from None
    train_crop = pre.get("train_crop", "center")
    if train_crop not in TRAIN_CROPS:
        raise ConfigError(f"benchmark.preprocessor.train_crop: expected one of {', '.join(TRAIN_CROPS)}, "
                          f"got {train_crop!r}")
    raw = pre.get("raw_size")
    steps = [TorchNearestResize(int(raw))] if raw else []
    if train and train_crop == "choice":
        return steps + [T.RandomChoice([T.RandomCrop(size), T.Resize(size, interpolation=T.InterpolationMode.NEAREST)])]
    crop = T.RandomCrop(size) if train and train_crop == "random" else T.CenterCrop(size)
    return steps + [T.Resize(resize, interpolation=interp), crop]


class PairedTransform:
    """(image, mask) -> (image tensor, mask tensor [1, H, W] in {0, 1}): the same random geometry for
    both (FCDD's ``MultiCompose``), masks resized with nearest neighbour; the image then gets the
    photometric steps and normalisation of ``transform``'s tail (``build_transform(pre, train)``)."""

    def __init__(self, pre: Mapping[str, Any], train: bool):
        self.pre, self.train = dict(pre), bool(train)
        full = build_transform(pre, train)
        n_geo = len(geometry(pre, train))
        self.image_tail = T.Compose(full.transforms[n_geo:])

    def __call__(self, img, mask):
        import random

        import torch
        steps = geometry(self.pre, self.train)
        mask_steps = geometry(self.pre, self.train, T.InterpolationMode.NEAREST)
        for step, mstep in zip(steps, mask_steps):
            state = random.getstate(), torch.get_rng_state()
            img = step(img)
            random.setstate(state[0])
            torch.set_rng_state(state[1])
            mask = _nearest(mstep)(mask)
        m = torch.from_numpy((__import__("numpy").asarray(mask) > 0).astype("float32"))[None]
        return self.image_tail(img), m


def _nearest(step):
    """``step`` with nearest-neighbour interpolation for masks (RandomChoice's options included)."""
    if isinstance(step, T.RandomChoice):
        return T.RandomChoice([_nearest(t) for t in step.transforms])
    if isinstance(step, T.Resize):
        return T.Resize(step.size, interpolation=T.InterpolationMode.NEAREST)
    return step


def image_mode(pre: Mapping[str, Any]) -> str:
    channels = int(pre.get("channels", 3))
    if channels not in (1, 3):
        raise ConfigError(f"benchmark.preprocessor.channels must be 1 or 3, got {channels}")
    return "RGB" if channels == 3 else "L"


def build_transform(pre: Mapping[str, Any], train: bool = False):
    """torchvision transform PIL image -> float tensor [channels, image_size, image_size]."""
    size = int(pre.get("image_size", 32))
    channels = int(pre.get("channels", 3))
    mean, std = list(pre.get("mean", [0.5] * channels)), list(pre.get("std", [0.5] * channels))
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(f"benchmark.preprocessor: mean/std need {channels} values, got {mean} / {std}")
    steps, tensor_steps = geometry(pre, train), []
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
                                                 interpolation=T.InterpolationMode(pre.get("interpolation", "bilinear"))))
            elif aug == "gaussian_noise":
                tensor_steps.append(GaussianNoise(float(pre.get("noise_std", 0.001))))
            elif aug == "jitter_choice":
                choices = pre.get("jitter_choices", [[0.04] * 4, [0.005, 0.0005, 0.0005, 0.0005]])
                if not choices or any(len(c) != 4 for c in choices):
                    raise ConfigError(f"benchmark.preprocessor.jitter_choices: expected a list of [brightness, "
                                      f"contrast, saturation, hue], got {choices!r}")
                steps.append(T.RandomChoice([T.ColorJitter(*map(float, c)) for c in choices]))
            elif aug == "relative_noise":
                tensor_steps.append(RelativeNoise(float(pre.get("relative_noise_scale", 0.1))))
            else:
                raise ConfigError(f"benchmark.preprocessor.train_augment: unknown '{aug}' (known: {', '.join(_AUGMENTS)})")
    gcn = pre.get("gcn")
    if gcn not in (None, "l1"):
        raise ConfigError(f"benchmark.preprocessor.gcn: expected null or l1, got {gcn!r}")
    if gcn:
        tensor_steps.append(GlobalContrastNorm())
    steps += [T.ToTensor(), *tensor_steps, T.Normalize(mean, std)]
    return T.Compose(steps)
