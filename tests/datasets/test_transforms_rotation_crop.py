"""The ``random_rotation`` and ``random_resized_crop`` training augmentations (VMDLS's MNIST recipe)."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from openood_ext.datasets.transforms import build_transform
from openood_ext.errors import ConfigError

VMDLS_MNIST = {"image_size": 28, "resize": 28, "channels": 1, "mean": [0.5], "std": [0.5],
               "train_augment": ["random_rotation", "random_resized_crop"], "rotation_degrees": 10,
               "resized_crop_scale": [0.95, 1.0]}


def _digit_like(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    a = np.zeros((28, 28), np.uint8)
    a[6:22, 12:16] = 255
    a[rng.integers(0, 28, 40), rng.integers(0, 28, 40)] = 128
    return Image.fromarray(a, "L")


def test_equals_the_published_mnist_training_transform_draw_for_draw():
    # the published recipe: RandomRotation(10, fill=(0,)), RandomResizedCrop(28, scale=(0.95, 1)), ToTensor,
    # Normalize((0.5,), (0.5,)); the same torch RNG state gives the same image
    published = T.Compose([T.RandomRotation(10, fill=(0,)), T.RandomResizedCrop(28, scale=(0.95, 1)), T.ToTensor(),
                           T.Normalize((0.5,), (0.5,))])
    ours = build_transform(VMDLS_MNIST, train=True)
    for seed in range(5):
        img = _digit_like(seed)
        torch.manual_seed(seed)
        want = published(img)
        torch.manual_seed(seed)
        got = ours(img)
        assert torch.equal(got, want)
    torch.manual_seed(0)
    a = ours(_digit_like(0))
    torch.manual_seed(1)
    assert not torch.equal(a, ours(_digit_like(0)))  # random: another draw, another image


def test_rotation_angles_stay_within_the_configured_degrees():
    # a vertical bar rotated by at most 10 degrees keeps its ink inside the band a 10-degree tilt allows
    tf = build_transform({**VMDLS_MNIST, "train_augment": ["random_rotation"]}, train=True)
    band = np.zeros((28, 28), bool)
    for y in range(28):
        dx = abs(y - 13.5) * np.tan(np.radians(10)) + 2.5
        band[y, int(np.floor(14 - 2 - dx)):int(np.ceil(14 + 2 + dx)) + 1] = True
    img = Image.fromarray(np.where(np.arange(28)[None, :].repeat(28, 0) // 4 == 3, 255, 0).astype(np.uint8), "L")
    torch.manual_seed(0)
    for _ in range(20):
        ink = tf(img)[0].numpy() > 0
        assert not (ink & ~band).any()


def test_not_applied_at_test_time():
    img = _digit_like(3)
    plain = T.Compose([T.ToTensor(), T.Normalize((0.5,), (0.5,))])(img)
    assert torch.equal(build_transform(VMDLS_MNIST, train=False)(img), plain)


@pytest.mark.parametrize("scale", [[0.0, 1.0], [0.9, 0.5], [0.5, 1.5], "big", [0.5]])
def test_bad_scale_is_one_line_error(scale):
    with pytest.raises(ConfigError, match="benchmark.preprocessor.resized_crop_scale"):
        build_transform({**VMDLS_MNIST, "resized_crop_scale": scale}, train=True)
