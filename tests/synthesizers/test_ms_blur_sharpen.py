"""EOE's blur and sharpen multiscale modes: the blur against scipy's Gaussian filter with EOE's kernel size,
the sharpen against PIL's unsharp mask, and ms_mode's checks for the four modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from scipy.ndimage import gaussian_filter

from openood_ext.errors import ConfigError
from openood_ext.synthesizers.fourier_filter import MSMode, blur_kernel_size, gaussian_blur, ms_filter, unsharp_mask


def test_blur_kernel_sizes_follow_eoe():
    # 2 * int(int(sigma / 2) + 0.5) + 1, clamped to [3, largest odd size below the width]
    assert [blur_kernel_size(s, 32) for s in (1, 2, 3, 4, 8, 16, 32)] == [3, 3, 3, 5, 9, 17, 31]
    assert blur_kernel_size(16, 8) == 7


@pytest.mark.parametrize("sigma", [1, 2, 4, 8])
def test_blur_is_a_truncated_normalised_gaussian_with_reflect_padding(sigma):
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(sigma), dtype=torch.float64)
    k = blur_kernel_size(sigma, 16)
    # scipy's 'mirror' is kornia's 'reflect'; truncate so that scipy's radius is k // 2
    want = gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=(k // 2) / sigma)
    assert np.allclose(gaussian_blur(x, sigma).numpy(), want, atol=1e-12)
    assert torch.equal(gaussian_blur(x, 0), x)


def test_sharpen_is_pils_unsharp_mask_on_the_8_bit_image():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (12, 12, 3)).astype(np.uint8)
    x = torch.from_numpy(img.transpose(2, 0, 1)).float()[None] / 255
    want = np.asarray(Image.fromarray(img).filter(ImageFilter.UnsharpMask(radius=2, percent=150, threshold=3)))
    got = (unsharp_mask(x, 1.5)[0] * 255).round().byte().numpy().transpose(1, 2, 0)
    assert np.array_equal(got, want) and not np.array_equal(got, img)
    grey = torch.from_numpy(img[..., 0]).float()[None, None] / 255
    assert ms_filter(grey, "sharpen", 2).shape == (1, 1, 12, 12)
    assert torch.equal(unsharp_mask(x, 0), x)


def test_ms_mode_accepts_blur_and_sharpen_with_any_magnitude():
    blur = MSMode.from_config({"mode": "blur", "magnitude": 32, "parts": ["train_nominal"]}, 32)
    assert blur.mode == "blur" and blur.magnitude == 32  # no half-image limit: EOE clamps the kernel instead
    with pytest.raises(ConfigError, match="magnitude: 32 is larger than half"):
        MSMode.from_config({"mode": "lpf", "magnitude": 32}, 32)
    with pytest.raises(ConfigError, match="ms_mode.mode"):
        MSMode.from_config({"mode": "median", "magnitude": 1}, 32)
