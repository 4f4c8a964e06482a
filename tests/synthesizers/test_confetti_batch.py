"""Confetti painted for the whole batch on the images' device equals the per-image painting (FCDD's loop),
blob by blob, with the same CPU random stream; the source returns its outliers on the images' device."""

from __future__ import annotations

import torch

from openood_ext.synthesizers.confetti import confetti_noise, draw_blobs, render_batch, render_blobs


def test_batch_painting_equals_the_per_image_loop(device):
    g = torch.Generator().manual_seed(0)
    blobs = [draw_blobs(40, 36, 3, 2e-3, (4, 12), None, g) for _ in range(5)]  # several overlapping blobs each
    loop = torch.stack([render_blobs(b, 40, 36) for b in blobs])
    batch = render_batch(blobs, 40, 36, device)
    assert batch.device.type == device.type
    torch.testing.assert_close(batch.cpu(), loop, rtol=0, atol=0)


def test_noise_is_the_same_draw_on_every_device(device):
    cpu = confetti_noise((3, 3, 32, 32), torch.Generator().manual_seed(4), side_range=(8, 16))
    here = confetti_noise((3, 3, 32, 32), torch.Generator().manual_seed(4), side_range=(8, 16), device=device)
    torch.testing.assert_close(here.cpu(), cpu, rtol=1e-5, atol=1e-3)  # blur: float rounding only
