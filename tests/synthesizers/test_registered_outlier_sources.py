"""Every registered outlier source (SYNTHESIZERS), built from its default config plus the few overrides below, is
set up the way a run does it (``setup(SourceContext)``, ``check()``, ``on_epoch_start(0)``) and draws one batch:

* image sources (``kind = "images"``): ``draw(batch)`` -> [B, C, H, W] float images of the benchmark's size,
  normalised like the benchmark (pixel values in [0, 1] after undoing mean/std);
* feature sources (``kind = "features"``): NPOS synthesises [classes * pick * keep, D] features from its queues; the
  OAML sources draw [n, dim] features from a tiny offline Stable Diffusion generation.

One test id per source."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from openood_ext.datasets import BENCHMARKS
from openood_ext.synthesizers import SYNTHESIZERS, SourceContext
from openood_ext.trainers import Batch
from sweep_helpers import TINY_SD, builtin_names, tiny_sd_root

SIZE, B = 16, 4


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny RGB 16x16 image-list benchmark (mean = std = 0.5) and a folder of 6 outlier images."""
    root = tmp_path_factory.mktemp("outlier_source_sweep")
    (root / "id").mkdir()
    (root / "oe").mkdir()
    for i in range(4):
        Image.new("RGB", (SIZE, SIZE), (10 * i, 120, 30)).save(root / "id" / f"{i}.png")
    for i in range(6):
        Image.new("RGB", (SIZE, SIZE), (40 * i, 255 - 40 * i, 20 * i)).save(root / "oe" / f"{i:02d}.png")
    (root / "train.txt").write_text("".join(f"id/{i}.png {i % 2}\n" for i in range(4)))
    bench = BENCHMARKS.build({"name": "imglist", "num_classes": 2, "data_root": str(root), "imglist_dir": str(root),
                              "id": {"train": "train.txt", "val": "train.txt", "test": "train.txt"},
                              "preprocessor": {"image_size": SIZE, "channels": 3, "mean": [0.5] * 3,
                                               "std": [0.5] * 3}})
    return {"bench": bench, "root": root, "factory": tmp_path_factory}


def _oe(env):
    return {"folder": str(env["root"] / "oe")}


def _fourier(env):
    return {"magnitude": 2, "source": {"name": "oe_images", **_oe(env)}}  # magnitude <= SIZE / 4


def _sd_text(env):
    return {"root": str(tiny_sd_root(env["factory"])), "generate": False, **TINY_SD}


def _sd_latent(env):
    return {"root": str(tiny_sd_root(env["factory"]))}


# name -> config overrides (or a function of the module's env giving them); anything not listed: defaults
OVERRIDES = {
    "fourier_filter": _fourier,
    "npos": {"queue_size": 6, "K": 3, "select": 3, "pick": 2, "candidates": 8, "keep": 2, "start_epoch": 0,
             "num_classes": 2, "backend": "torch"},
    "oe_images": _oe,
    "sd_latent_outliers": _sd_latent,
    "sd_text_outliers": _sd_text,
}


def _check_images(x, source_name):
    assert torch.is_tensor(x) and x.dtype == torch.float32, source_name
    assert x.shape == (B, 3, SIZE, SIZE), (source_name, tuple(x.shape))
    unit = x * 0.5 + 0.5  # back to pixel values
    assert torch.isfinite(x).all() and unit.min() >= -1e-4 and unit.max() <= 1 + 1e-4, source_name


# npos warns that the 4-image toy set fills its queues with repeated views, which is the point of a tiny test
@pytest.mark.filterwarnings("ignore:npos. .* fewer training images than queue_size")
@pytest.mark.parametrize("name", builtin_names(SYNTHESIZERS))
def test_registered_outlier_source_draws_a_batch(name, env):
    overrides = OVERRIDES.get(name, {})
    overrides = overrides(env) if callable(overrides) else overrides
    src = SYNTHESIZERS.build({"name": name, **overrides})
    assert src.kind in ("images", "features"), (name, src.kind)
    src.setup(SourceContext(env["bench"], torch.device("cpu"), 0, B, 2))
    src.check()
    src.on_epoch_start(0)
    assert isinstance(src.describe(), str) and src.describe()
    assert isinstance(src.label(), str) and src.label()
    g = torch.Generator().manual_seed(0)

    if src.kind == "images":
        images = torch.rand(B, 3, SIZE, SIZE, generator=g) * 2 - 1
        out = src.draw(Batch(images, torch.zeros(B, dtype=torch.long), None, 0, 0, 0))
        _check_images(out, name)
        assert not torch.equal(out, images), f"{name} returned the ID images unchanged"
        src.on_epoch_start(0)  # the draw is reseeded per epoch: the same outliers again
        again = src.draw(Batch(images, torch.zeros(B, dtype=torch.long), None, 0, 0, 0))
        assert torch.equal(out, again), f"{name}: on_epoch_start(0) does not replay the epoch's draw"
    elif name == "npos":
        dim = 5
        for _ in range(2):  # fill both class queues (6 each)
            src.update(torch.randn(6, dim, generator=g), torch.tensor([0, 1, 0, 1, 0, 1]))
        assert src.ready(0)
        out = src.synthesize()
        p = OVERRIDES["npos"]
        assert out.shape == (p["num_classes"] * p["pick"] * p["keep"], dim) and torch.isfinite(out).all()
        assert not out.requires_grad
    else:  # feature pools drawn by their trainer (OAML)
        out = src.draw_features(B, g)
        assert out.shape == (B, src.dim) and out.dtype.is_floating_point and torch.isfinite(out).all()
        again = src.draw_features(B, torch.Generator().manual_seed(0))
        assert torch.equal(out, again), f"{name}: the same generator seed draws other features"
