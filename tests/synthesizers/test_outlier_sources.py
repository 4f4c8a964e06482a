"""Outlier sources (oe_images, confetti, fourier_filter) and the OE / energy / LogitNorm objectives."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from openood_ext.datasets import BENCHMARKS
from openood_ext.errors import ConfigError
from openood_ext.synthesizers import SYNTHESIZERS, SourceContext
from openood_ext.synthesizers.confetti import apply_confetti, confetti_noise, draw_blobs, render_blobs
from openood_ext.synthesizers.fourier_filter import fourier_filter
from openood_ext.trainers import Batch
from openood_ext.trainers.energy_oe import energy, energy_hinge
from openood_ext.trainers.logitnorm import logit_norm
from openood_ext.trainers.oe import uniform_cross_entropy


@pytest.fixture(scope="module")
def folder_bench(tmp_path_factory):
    """A tiny RGB image-list benchmark with 10 distinct 16x16 outlier images in a folder."""
    root = tmp_path_factory.mktemp("oe_bench")
    (root / "id").mkdir()
    (root / "oe").mkdir()
    for i in range(4):
        Image.new("RGB", (16, 16), (10 * i, 20, 30)).save(root / "id" / f"{i}.png")
    for i in range(10):
        Image.new("RGB", (16, 16), (25 * i, 25 * i, 25 * i)).save(root / "oe" / f"{i:02d}.png")
    lst = root / "train.txt"
    lst.write_text("".join(f"id/{i}.png {i % 2}\n" for i in range(4)))
    bench = BENCHMARKS.build({"name": "imglist", "num_classes": 2, "data_root": str(root), "imglist_dir": str(root),
                              "id": {"train": "train.txt", "val": "train.txt", "test": "train.txt"},
                              "preprocessor": {"image_size": 16, "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3}})
    return bench, root


def make_source(spec, bench, seed=0, batch_size=4, steps=3):
    src = SYNTHESIZERS.build(spec)
    src.setup(SourceContext(bench, torch.device("cpu"), seed, batch_size, steps))
    src.check()
    return src


def dummy_batch(epoch=0, images=None):
    images = torch.zeros(4, 3, 16, 16) if images is None else images
    return Batch(images, torch.zeros(len(images), dtype=torch.long), None, epoch, 0, 0)


def pixel_values(x):  # back to 0..255 grey levels of the constant test images
    return torch.round((x * 0.5 + 0.5) * 255)


def test_oe_images_shapes_ranges_and_determinism(folder_bench):
    bench, root = folder_bench
    spec = {"name": "oe_images", "folder": str(root / "oe"), "augment": False}
    a, b = make_source(spec, bench, seed=3), make_source(spec, bench, seed=3)
    for epoch in range(2):
        a.on_epoch_start(epoch), b.on_epoch_start(epoch)
        for _ in range(3):
            xa, xb = a.draw(dummy_batch(epoch)), b.draw(dummy_batch(epoch))
            assert xa.shape == (4, 3, 16, 16) and xa.dtype == torch.float32
            assert xa.min() >= -1 - 1e-6 and xa.max() <= 1 + 1e-6
            assert torch.equal(xa, xb)
    other = make_source(spec, bench, seed=4)
    other.on_epoch_start(0)
    a.on_epoch_start(0)
    assert not torch.equal(torch.cat([a.draw(dummy_batch()) for _ in range(3)]),
                           torch.cat([other.draw(dummy_batch()) for _ in range(3)]))


def test_oe_images_limit_draws_once_and_cycles(folder_bench):
    bench, root = folder_bench
    one = make_source({"name": "oe_images", "folder": str(root / "oe"), "limit": 1, "augment": False}, bench, seed=5)
    one.on_epoch_start(0)
    x = torch.cat([one.draw(dummy_batch()) for _ in range(3)])
    assert len(torch.unique(pixel_values(x)[:, 0, 0, 0])) == 1  # every slot holds the same image
    three = make_source({"name": "oe_images", "folder": str(root / "oe"), "limit": 3, "augment": False}, bench, seed=5)
    seen = set()
    for epoch in range(3):
        three.on_epoch_start(epoch)
        seen |= set(pixel_values(torch.cat([three.draw(dummy_batch(epoch)) for _ in range(3)]))[:, 0, 0, 0].tolist())
        batches = three.epoch_indices(epoch)
        flat = [i for b in batches for i in b]
        # cycled: each pass over the pool uses every pooled image once
        assert sorted(flat[:3]) == sorted(three.pool.tolist())
    assert len(seen) == 3 and len(three.pool) == 3
    again = make_source({"name": "oe_images", "folder": str(root / "oe"), "limit": 3}, bench, seed=5)
    assert np.array_equal(again.pool, three.pool)  # the subset depends only on the run's seed


def test_oe_images_limit_larger_than_pool_is_an_error(folder_bench):
    bench, root = folder_bench
    with pytest.raises(ConfigError, match=r"limit: 11 is larger than the outlier set \(10 images"):
        make_source({"name": "oe_images", "folder": str(root / "oe"), "limit": 11}, bench)


# ---------------------------------------------------------------------------------------------- confetti
def test_confetti_blob_statistics():
    g = torch.Generator().manual_seed(0)
    counts, sides, angles = [], [], []
    for _ in range(400):
        blobs = draw_blobs(240, 240, 3, 1.8e-5, (8, 54), None, g)
        counts.append(len(blobs.side))
        sides += blobs.side.tolist()
        angles += blobs.angle.tolist()
        assert blobs.colour.min() >= -256 and blobs.colour.max() <= -1
    expected = 240 * 240 * 1.8e-5  # about 1.04 blobs per image; FCDD redraws an empty mask
    p0 = (1 - 1.8e-5) ** (240 * 240)
    mean_conditioned = expected / (1 - p0)  # E[N | N >= 1]
    assert min(counts) >= 1
    assert abs(np.mean(counts) - mean_conditioned) < 4 * math.sqrt(expected / 400)
    assert min(sides) >= 8 and max(sides) <= 54 and abs(np.mean(sides) - 31) < 2.5
    assert min(angles) >= -45 and max(angles) <= 45


def test_confetti_render_and_dark_component():
    g = torch.Generator().manual_seed(1)
    dark = draw_blobs(64, 64, 1, 0.0, (10, 10), -255.0, g)  # probability 0 still forces one blob
    assert len(dark.side) == 1 and torch.all(dark.colour == -255)
    dark.angle[:] = 0
    dark.cx[:], dark.cy[:] = 30, 30
    painted = render_blobs(dark, 64, 64)
    assert int((painted != 0).sum()) == 10 * 10  # FCDD's even square: offsets -4..5 around the centre
    assert painted[0, 26:36, 26:36].eq(-255).all()


def test_apply_confetti_clamps_flips_and_marks_changes():
    g = torch.Generator().manual_seed(2)
    black = torch.zeros(2, 3, 32, 32)
    noise = confetti_noise((2, 3, 32, 32), g, side_range=(8, 16))
    out, changed = apply_confetti(black, noise)
    assert out.min() >= 0 and out.max() <= 255
    assert out.sum() > 0  # the negative noise on a black image is flipped to a visible one (no change at all)
    assert changed.shape == (2, 1, 32, 32) and set(changed.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(changed[:, 0] > 0, (out != black).any(1))


def test_confetti_source_is_aligned_and_deterministic(folder_bench):
    bench, _ = folder_bench
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    src = make_source({"name": "confetti", "side_range": [3, 6]}, bench)
    src.on_epoch_start(0)
    a = src.draw(dummy_batch(images=images))
    src.on_epoch_start(0)
    b = src.draw(dummy_batch(images=images))
    assert torch.equal(a, b) and a.shape == images.shape
    unchanged = src.last_changed[:, 0] == 0
    assert torch.allclose(a.permute(1, 0, 2, 3)[:, unchanged], images.permute(1, 0, 2, 3)[:, unchanged], atol=1e-5)


# ---------------------------------------------------------------------------------------------- fourier
def test_fourier_filters_match_a_hand_computed_fft():
    rng = np.random.default_rng(0)
    x = rng.random((1, 1, 8, 8))
    e = 2
    spec = np.fft.fftshift(np.fft.fft2(x[0, 0]))
    low = spec.copy()
    low[:e, :], low[-e:, :], low[:, :e], low[:, -e:] = 0, 0, 0, 0
    high = spec.copy()
    high[4 - e:4 + e, 4 - e:4 + e] = 0
    for mode, kept in (("lpf", low), ("hpf", high)):
        ref = np.real(np.fft.ifft2(np.fft.ifftshift(kept)))
        ref = (ref - ref.min()) / (ref.max() - ref.min())
        out = fourier_filter(torch.tensor(x), mode, e)[0, 0].numpy()
        np.testing.assert_allclose(out, ref, atol=1e-10)
    # hpf removes the mean (DC); lpf of a constant image keeps it constant
    const = torch.full((1, 1, 8, 8), 0.3, dtype=torch.float64)
    assert torch.allclose(fourier_filter(const, "lpf", 2), torch.zeros_like(const))
    with pytest.raises(ConfigError, match="magnitude: expected 0..4"):
        fourier_filter(torch.tensor(x), "lpf", 5)


def test_fourier_filter_source_wraps_an_image_source(folder_bench):
    bench, root = folder_bench
    src = make_source({"name": "fourier_filter", "mode": "hpf", "magnitude": 2,
                       "source": {"name": "oe_images", "folder": str(root / "oe"), "augment": False}}, bench)
    src.on_epoch_start(0)
    out = src.draw(dummy_batch())
    assert out.shape == (4, 3, 16, 16)
    unit = out * 0.5 + 0.5
    assert unit.min() >= -1e-5 and unit.max() <= 1 + 1e-5


# ---------------------------------------------------------------------------------------------- objectives
def test_objectives_on_hand_computed_cases():
    z = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    # CE to uniform = logsumexp - mean logit
    expected = ((math.log(math.exp(2) + 2) - 2 / 3) + (math.log(3 * math.e) - 1)) / 2
    assert uniform_cross_entropy(z).item() == pytest.approx(expected)
    assert uniform_cross_entropy(torch.ones(1, 3)).item() == pytest.approx(math.log(3))
    assert energy(z)[1].item() == pytest.approx(-(1 + math.log(3)))
    e_in, e_out = torch.tensor([-30.0, -20.0]), torch.tensor([-10.0, -5.0])
    # ID: only -20 violates m_in = -25 by 5 -> 25/2; OOD: only -10 violates m_out = -7 by 3 -> 9/2
    assert energy_hinge(e_in, e_out, -25, -7).item() == pytest.approx(12.5 + 4.5)
    normed = logit_norm(torch.tensor([[3.0, 4.0]]), 0.5)
    torch.testing.assert_close(normed, torch.tensor([[0.6, 0.8]]) / 0.5, rtol=1e-6, atol=1e-6)
    assert F.cross_entropy(normed, torch.tensor([1])).item() < F.cross_entropy(normed, torch.tensor([0])).item()


# ---------------------------------------------------------------------------------------------- data parallel
def make_rank_source(spec, bench, rank, world, seed=0, steps=3):
    src = SYNTHESIZERS.build(spec)
    src.setup(SourceContext(bench, torch.device("cpu"), seed, 4, steps, rank=rank, world_size=world))
    src.check()
    return src


def test_oe_images_ranks_draw_different_images_and_together_cover_the_pool(folder_bench):
    """Two ranks: the epoch's batches are dealt out, so a global step holds two different batches and
    the 2 x 3 steps see more than one rank's 12 slots of the 10-image pool (every image, here)."""
    bench, root = folder_bench
    spec = {"name": "oe_images", "folder": str(root / "oe"), "augment": False}
    ranks = [make_rank_source(spec, bench, r, 2, seed=1) for r in range(2)]
    alone = make_rank_source(spec, bench, 0, 1, seed=1, steps=6)  # one process taking both ranks' steps
    for epoch in range(2):
        per_rank = [src.epoch_indices(epoch) for src in ranks]
        assert all(len(b) == 3 for b in per_rank)
        for step in range(3):
            assert per_rank[0][step] != per_rank[1][step]
        interleaved = [b for pair in zip(*per_rank) for b in pair]
        assert interleaved == alone.epoch_indices(epoch)
        assert set(i for b in interleaved for i in b) == set(range(10))
        for src in ranks:
            src.on_epoch_start(epoch)
        x0, x1 = (src.draw(dummy_batch(epoch)) for src in ranks)
        assert not torch.equal(x0, x1)


def test_a_single_process_draws_what_it_drew_before_ranks_existed(folder_bench):
    bench, root = folder_bench
    spec = {"name": "oe_images", "folder": str(root / "oe"), "augment": False}
    src = make_rank_source(spec, bench, 0, 1, seed=2)
    rng = np.random.default_rng([2, 0x0E, 0])  # the documented (seed, epoch) stream, cut into batches
    stream = np.concatenate([rng.permutation(np.arange(10)) for _ in range(2)])[:12]
    assert src.epoch_indices(0) == [stream[i:i + 4].tolist() for i in range(0, 12, 4)]


@pytest.mark.parametrize("spec", [{"name": "confetti", "side_range": [3, 6], "prob": 0.01},
                                  {"name": "fcdd_noise", "noise": "gaussian"}], ids=["confetti", "fcdd_noise"])
def test_synthetic_sources_draw_different_noise_on_each_rank(folder_bench, spec):
    bench, _ = folder_bench
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    draws = []
    for rank in range(2):
        src = make_rank_source(spec, bench, rank, 2)
        src.on_epoch_start(0)
        draws.append(src.draw(dummy_batch(images=images)))
    assert not torch.equal(draws[0], draws[1])
    alone = make_rank_source(spec, bench, 0, 1)
    again = make_source(spec, bench)
    alone.on_epoch_start(0), again.on_epoch_start(0)
    assert torch.equal(alone.draw(dummy_batch(images=images)), again.draw(dummy_batch(images=images)))
