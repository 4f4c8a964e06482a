"""Batched device augmentation against its definitions: each kernel against torchvision's functional op for
the same parameters, each random op's parameter distribution against torchvision's (statistical tests
with fixed seeds), and the generator contract (same seed, same batches)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from scipy import stats
from torchvision import transforms as T

from openood_ext.datasets import batch_transforms as bt
from openood_ext.errors import ConfigError


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def batch(n=8, c=3, size=12, seed=0):
    return torch.rand(n, c, size, size, generator=gen(seed))


# ------------------------------------------------------------------------------ pad-and-crop, flip
@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("dtype,padding,size", [(torch.float32, 3, 10), (torch.uint8, 4, 8), (torch.float32, 0, 7),
                                                (torch.uint8, 12, 4)])
def test_pad_crop_equals_torchvision_crop_at_the_drawn_offsets(dtype, padding, size, compiled, monkeypatch):
    if not compiled:  # the tensor form (the GPU's), on the CPU
        monkeypatch.setattr(bt.cpu_loops, "available", lambda: False)
    x = (batch(6, size=10) * 255).to(dtype)
    op = bt.PadCrop(size, padding=padding)
    i, j = op.offsets(6, 10, 10, gen(5), x.device)
    out = op(x, gen(5))
    assert out.shape == (6, 3, size, size) and out.dtype == dtype
    for b in range(6):
        padded = TF.pad(x[b], [padding])
        assert torch.equal(out[b], TF.crop(padded, int(i[b]), int(j[b]), size, size))


def test_pad_crop_offsets_are_uniform_over_torchvisions_range():
    op = bt.PadCrop(32, padding=4)
    i, j = op.offsets(20000, 32, 32, gen(1), torch.device("cpu"))
    for v in (i, j):
        counts = np.bincount(v.numpy(), minlength=9)
        assert v.min() == 0 and v.max() == 8 and len(counts) == 9  # 0 .. H + 2p - size, as RandomCrop
        assert stats.chisquare(counts).pvalue > 1e-3
    # torchvision draws its offsets from the same set
    tv = {T.RandomCrop.get_params(torch.zeros(3, 40, 40), (32, 32))[0] for _ in range(400)}
    assert tv == set(range(9))


def test_flip_rate_is_one_half_and_flips_whole_images():
    x = batch(4000, c=1, size=4)
    out = bt.HFlip()(x, gen(2))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((flipped | kept).all())
    assert stats.binomtest(int(flipped.sum()), 4000, 0.5).pvalue > 1e-3


# ------------------------------------------------------------------------------ colour jitter
@pytest.mark.parametrize("op,fn,factor", [(0, TF.adjust_brightness, 1.3), (1, TF.adjust_contrast, 0.7),
                                          (2, TF.adjust_saturation, 1.4), (3, TF.adjust_hue, 0.08),
                                          (3, TF.adjust_hue, -0.21)])
def test_jitter_kernels_equal_torchvisions_tensor_ops(op, fn, factor):
    x = batch(5)
    ours = bt.ColorJitter.adjust(op, x, torch.full((5,), factor))
    theirs = torch.stack([fn(img, factor) for img in x])
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_jitter_kernels_on_grayscale_batches_change_only_brightness_and_contrast():
    x = batch(3, c=1)
    f = torch.full((3,), 1.2)
    assert torch.allclose(bt.ColorJitter.adjust(1, x, f), torch.stack([TF.adjust_contrast(i, 1.2) for i in x]), atol=1e-6)
    assert torch.equal(bt.ColorJitter.adjust(2, x, f), x) and torch.equal(bt.ColorJitter.adjust(3, x, f), x)


def test_jitter_factors_span_torchvisions_ranges_uniformly():
    jitter = bt.ColorJitter(0.4, 0.2, 0.3, 0.1)
    order, factors = jitter.params(20000, gen(3), torch.device("cpu"))
    tv = T.ColorJitter(0.4, 0.2, 0.3, 0.1)
    for f, (lo, hi) in zip(factors, (tv.brightness, tv.contrast, tv.saturation, tv.hue)):
        assert lo <= float(f.min()) and float(f.max()) <= hi
        assert stats.kstest(f.numpy(), "uniform", args=(lo, hi - lo)).pvalue > 1e-3
    # every one of the 24 orders equally likely, drawn per sample
    perms = {p: k for k, p in enumerate(itertools.permutations(range(4)))}
    counts = np.bincount([perms[tuple(r)] for r in order.tolist()], minlength=24)
    assert stats.chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize("eight_bit", [False, True])
def test_jitter_applies_each_samples_own_order(eight_bit):
    jitter = bt.ColorJitter(0.5, 0.5, 0.5, 0.2, eight_bit=eight_bit)
    x = batch(6)
    order, factors = jitter.params(6, gen(4), x.device)
    out = jitter(x, gen(4))
    for b in range(6):
        y = x[b:b + 1]
        for op in order[b].tolist():
            y = bt.ColorJitter.adjust(op, y, factors[op][b:b + 1], eight_bit)
        assert torch.allclose(out[b], y[0], atol=1e-6)


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("eight_bit", [False, True])
def test_jitter_paths_agree_compiled_masked_and_subset(channels, eight_bit):
    jitter = bt.ColorJitter(0.6, 0.6, 0.6, 0.4, eight_bit=eight_bit)
    x = (batch(16, c=channels) * 255).round() / 255  # 8-bit images, as the pipeline's
    subset = jitter(x, gen(12), path="subset")
    assert torch.allclose(jitter(x, gen(12), path="masked"), subset, atol=1e-6)
    assert torch.allclose(jitter(x, gen(12), path="compiled"), subset, atol=1e-5)
    assert not torch.equal(subset, x)


def test_jitter_compiled_path_with_some_adjustments_off_and_an_empty_batch():
    x = batch(5)
    for jitter in (bt.ColorJitter(brightness=0.5), bt.ColorJitter(hue=0.3), bt.ColorJitter(0, 0.5, 0.5, 0)):
        assert torch.allclose(jitter(x, gen(13), path="compiled"), jitter(x, gen(13), path="subset"), atol=1e-6)
    assert bt.ColorJitter(0.5, 0.5, 0.5, 0.1)(x[:0], gen(0)).shape == (0, 3, 12, 12)


def test_jitter_takes_uint8_as_totensor_would_and_falls_back_without_numba(monkeypatch):
    jitter = bt.ColorJitter(0.5, 0.5, 0.5, 0.2)
    u8 = (batch(6) * 255).to(torch.uint8)
    as_float = u8.float().div_(255)  # ToTensor's conversion
    assert torch.equal(jitter(u8, gen(16)), jitter(as_float, gen(16)))
    assert torch.allclose(jitter(u8, gen(16), path="subset"), jitter(as_float, gen(16)), atol=1e-5)
    monkeypatch.setattr(bt.cpu_loops, "available", lambda: False)  # auto: the tensor kernels
    assert torch.allclose(jitter(as_float, gen(16)), jitter(as_float, gen(16), path="compiled"), atol=1e-5)


def test_pipeline_normalises_its_own_batch_in_place_but_never_its_input():
    norm = bt.Normalize([0.5] * 3, [0.25] * 3)
    x = batch(4)
    kept = x.clone()
    assert torch.equal(bt.BatchPipeline([norm])(x, gen(0)), (kept - 0.5) / 0.25) and torch.equal(x, kept)
    u8 = (batch(4) * 255).to(torch.uint8)
    out = bt.BatchPipeline([bt.ColorJitter(0.3, 0.3, 0.3, 0.1), norm])(u8, gen(1))
    assert torch.allclose(out, norm(bt.ColorJitter(0.3, 0.3, 0.3, 0.1)(u8, gen(1))), atol=1e-6)


def test_eight_bit_jitter_lands_on_pil_levels_and_equals_pils_brightness_and_contrast():
    from PIL import Image
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    for op, fn in enumerate((TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)):
        for f in (0.7, 0.99, 1.01, 1.4):
            pil = np.stack([np.asarray(fn(Image.fromarray(im), f)) for im in pixels])
            pil = torch.from_numpy(pil).permute(0, 3, 1, 2).float()
            ours = bt.ColorJitter.adjust(op, x, torch.full((4,), f), eight_bit=True) * 255
            assert torch.allclose(ours, ours.round(), atol=1e-3)
            if op < 2:
                assert torch.equal(ours.round(), pil)
            else:  # PIL's grey uses integer weights: one level at most, rarely
                assert (ours - pil).abs().max() <= 1 + 1e-3 and (ours.round() != pil).float().mean() < 0.01
            # the float kernels sit above PIL's truncated levels: about half a level
            assert 0.2 < float((bt.ColorJitter.adjust(op, x, torch.full((4,), f)) * 255 - pil).mean()) < 0.6


def test_jitter_rejects_hue_outside_torchvisions_bound():
    with pytest.raises(ConfigError, match="hue"):
        bt.ColorJitter(hue=0.6)


# ------------------------------------------------------------------------------ geometry
def test_rotation_equals_torchvisions_tensor_rotate_for_the_drawn_angle():
    x = batch(4, size=16)
    op = bt.Rotate(30)
    angles = bt.uniform(-30, 30, 4, gen(6), x.device)
    out = op(x, gen(6))
    for b in range(4):
        ref = TF.rotate(x[b], float(angles[b]), interpolation=T.InterpolationMode.NEAREST)
        # nearest-neighbour picks may differ where a sample point falls on a pixel border
        assert (out[b] - ref).abs().gt(1e-6).float().mean() < 0.02


def test_rotation_angles_are_uniform_in_the_range():
    a = bt.uniform(-15, 15, 20000, gen(7), torch.device("cpu"))
    assert stats.kstest(a.numpy(), "uniform", args=(-15, 30)).pvalue > 1e-3


def test_resized_crop_boxes_follow_torchvisions_distribution():
    op = bt.ResizedCrop(32, scale=(0.08, 1.0))
    ours = op.boxes(4000, 32, 40, gen(8), torch.device("cpu")).numpy()
    torch.manual_seed(8)
    theirs = np.array([T.RandomResizedCrop.get_params(torch.zeros(3, 32, 40), [0.08, 1.0], [3 / 4, 4 / 3])
                       for _ in range(4000)])
    for col in range(4):
        assert stats.ks_2samp(ours[:, col], theirs[:, col]).pvalue > 1e-3
    top, left, h, w = ours.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 40).all()


def test_resized_crop_of_the_whole_image_is_the_identity():
    x = batch(2, size=8)
    op = bt.ResizedCrop(8, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(op(x, gen(0)), x, atol=1e-5)


# ------------------------------------------------------------------------------ per-pixel ops
def test_noise_has_the_configured_std_and_zero_mean():
    x = torch.zeros(64, 3, 16, 16)
    d = bt.GaussianNoise(0.001)(x, gen(9))
    assert abs(float(d.std()) - 0.001) < 2e-5 and abs(float(d.mean())) < 2e-5


def test_grayscale_equals_torchvision_and_repeats_for_three_channels():
    x = batch(3)
    assert torch.allclose(bt.Grayscale(1)(x), torch.stack([TF.rgb_to_grayscale(i) for i in x]), atol=1e-6)
    three = bt.Grayscale(3)(x)
    assert three.shape == x.shape and torch.equal(three[:, 0], three[:, 2])
    assert torch.equal(bt.Grayscale(3)(three[:, :1]), three)


def test_normalize_global_and_per_class():
    x = batch(4)
    glob = bt.Normalize([0.1, 0.2, 0.3], [0.5, 0.25, 2.0])(x)
    assert torch.allclose(glob, TF.normalize(x, [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]), atol=1e-7)
    mean = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    std = torch.tensor([[1.0, 1.0, 1.0], [0.5, 0.5, 0.5]])
    labels = torch.tensor([0, 1, 1, 0])
    out = bt.Normalize(mean, std)(x, None, labels)
    assert torch.equal(out[0], x[0]) and torch.allclose(out[1], (x[1] - 0.5) / 0.5)


def test_local_contrast_normalisation_by_hand():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])  # mean 1.5, |x - mean| mean 1.0, std sqrt(1.25)
    assert torch.allclose(bt.LocalContrast("l1")(x), x - 1.5)
    assert torch.allclose(bt.LocalContrast("l2")(x), (x - 1.5) / math.sqrt(1.25))


def test_pipeline_runs_a_flip_after_the_jitter_first_on_uint8_and_the_same_op_otherwise():
    jitter, flip, crop = bt.ColorJitter(0.4, 0.4, 0.4, 0.1), bt.HFlip(), bt.PadCrop(12, 2)
    pipe = bt.BatchPipeline([jitter, flip, crop])
    assert pipe.lead == [flip] and pipe.rest == [jitter, crop] and pipe.ops == [jitter, flip, crop]
    x = (batch(8) * 255).to(torch.uint8)
    g = gen(14)
    expected = crop(jitter(flip(x, g).float().div_(255), g), g)
    assert torch.allclose(pipe(x, gen(14)), expected, atol=1e-6)
    # flip then jitter is jitter then flip for the same draws (contrast's mean is order-free)
    f, order_g = x.float() / 255, gen(15)
    order, factors = jitter.params(8, order_g, f.device)
    one = bt.cpu_loops.jitter(f.flip(-1), order, factors, True)
    other = bt.cpu_loops.jitter(f, order, factors, True).flip(-1)
    assert torch.allclose(one, other, atol=1e-6)
    assert bt.BatchPipeline([crop, jitter, flip]).lead == [crop, flip]  # a crop does not commute


# ------------------------------------------------------------------------------ generator contract
def test_same_seed_same_batches_and_state_restores_them():
    pipe = bt.BatchPipeline([bt.PadCrop(12, 2), bt.HFlip(), bt.ColorJitter(0.3, 0.3, 0.3, 0.05),
                             bt.GaussianNoise(0.01), bt.Normalize([0.5] * 3, [0.2] * 3)])
    x = (batch(5) * 255).to(torch.uint8)
    a, b = gen(11), gen(11)
    assert torch.equal(pipe(x, a), pipe(x, b))
    state = a.get_state()
    first = pipe(x, a)
    b.set_state(state)
    assert torch.equal(first, pipe(x, b))
    assert not torch.equal(first, pipe(x, a))
