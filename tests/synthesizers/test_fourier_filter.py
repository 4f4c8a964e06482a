"""EOE's frequency filters: against hand-computed spectra (numpy), EOE's magnitude-0 identity,
ms_mode on chosen data parts of an AD cell, normal-class normalisation against numpy, and the multiscale
sweep (one row per magnitude) on a tiny folder set."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from openood_ext.errors import ConfigError
from openood_ext.pipelines.ad.data import adapt_benchmark, check_preprocessor
from openood_ext.datasets.anomaly.folder import FolderADBenchmark
from openood_ext.synthesizers.fourier_filter import (
    FourierTransform,
    MSMode,
    fourier_filter,
)
from openood_ext.synthesizers.pixels import PixelSpace
from eoe_helpers import cli, data, write_cfg  # noqa: F401  (shared fixture and helpers)

N = 8
J = np.arange(N)
COS = np.tile(np.cos(2 * np.pi * J / N), (N, 1))           # energy at frequencies (0, +1) and (0, -1)
CHECKER = (-1.0) ** (J[:, None] + J[None, :])                 # energy at the Nyquist frequency (-4, -4)


def minmax(x: np.ndarray) -> np.ndarray:
    x = x - x.min()
    return x / x.max()


def as_batch(*images: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.stack(images), dtype=torch.float64)[:, None]


def test_lpf_removes_the_nyquist_checkerboard_and_keeps_the_low_cosine():
    # fftshift puts frequency 0 at index 4 and -4 at index 0; lpf e=1 zeroes rows/cols 0 and 7 (-4 and +3)
    out = fourier_filter(as_batch(0.3 + COS + CHECKER), "lpf", 1)[0, 0].numpy()
    assert np.allclose(out, minmax(COS), atol=1e-10)


def test_hpf_zeroes_the_asymmetric_central_block():
    # hpf e=1 zeroes the shifted block [3, 5) x [3, 5): frequencies (-1..0) x (-1..0). That removes the
    # constant and the cosine's (0, -1) half but keeps its (0, +1) half: real part 0.5 cos.
    out = fourier_filter(as_batch(0.3 + COS + CHECKER), "hpf", 1)[0, 0].numpy()
    assert np.allclose(out, minmax(0.5 * COS + CHECKER), atol=1e-10)


@pytest.mark.parametrize("mode, e", [("lpf", 1), ("lpf", 3), ("hpf", 1), ("hpf", 2), ("hpf", 3)])
def test_random_images_equal_numpy_per_channel_spectra(mode, e):
    rng = np.random.default_rng(e)
    x = rng.random((2, 3, N, N))
    want = np.empty_like(x)
    for b in range(2):
        chans = []
        for c in range(3):
            f = np.fft.fftshift(np.fft.fft2(x[b, c]))
            if mode == "lpf":
                f[:e, :] = 0
                f[N - e:, :] = 0
                f[:, :e] = 0
                f[:, N - e:] = 0
            else:
                f[N // 2 - e:N // 2 + e, N // 2 - e:N // 2 + e] = 0
            chans.append(np.fft.ifft2(np.fft.ifftshift(f)).real)
        want[b] = minmax(np.stack(chans))  # min-max over channels and pixels of one image
    got = fourier_filter(torch.tensor(x), mode, e).numpy()
    assert np.allclose(got, want, atol=1e-10)


def test_magnitude_zero_is_the_identity_and_too_large_is_an_error():
    x = torch.rand(2, 3, N, N)
    # lpf at half the image removes the whole spectrum: EOE's min-max gives 0/0 = NaN, ours zeros
    assert torch.equal(fourier_filter(x, "lpf", N // 2), torch.zeros_like(x))
    assert torch.equal(fourier_filter(x, "lpf", 0), x) and torch.equal(fourier_filter(x, "hpf", 0), x)
    with pytest.raises(ConfigError, match="magnitude: expected 0..4 for 8x8 images, got 5"):
        fourier_filter(x, "lpf", 5)
    assert MSMode.from_config({"mode": "hpf", "magnitude": 16}, 32) == MSMode("hpf", 16, (
        "train_nominal", "train_oe", "test_nominal", "test_anomalous"))
    with pytest.raises(ConfigError, match=r"ms_mode.magnitude: 17 is larger than half the 32x32 image \(16"):
        check_preprocessor({"image_size": 32, "ms_mode": {"magnitude": 17}})
    with pytest.raises(ConfigError, match="ms_mode.parts: expected a non-empty list of train_nominal"):
        check_preprocessor({"ms_mode": {"parts": ["test"]}})
    with pytest.raises(ConfigError, match="normalize: expected one of fixed, normal_class"):
        check_preprocessor({"normalize": "per_image"})


def test_transform_filters_in_pixel_units():
    pixels = PixelSpace({"channels": 3, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.25], "image_size": N})
    x01 = torch.rand(1, 3, N, N)
    got = FourierTransform(pixels, "lpf", 2)(pixels.from_unit(x01)[0])
    assert torch.allclose(got, pixels.from_unit(fourier_filter(x01, "lpf", 2))[0], atol=1e-5)


def cell(data: Path, tmp: Path, pre: dict) -> FolderADBenchmark:  # noqa: F811
    bench = FolderADBenchmark(root=str(data / "ovr"), normal_class="c0", derived_dir=str(tmp / "lists"),
                              preprocessor=pre)
    adapt_benchmark(bench)
    return bench


def test_normal_class_statistics_equal_numpy_and_are_cached(data, tmp_path):  # noqa: F811
    from PIL import Image
    pre = {"image_size": 32, "resize": 32, "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3, "normalize": "normal_class"}
    bench = cell(data, tmp_path, pre)
    pix = np.stack([np.asarray(Image.open(p), np.float64) / 255 for p in sorted((data / "ovr" / "train" / "c0").glob("*.png"))])
    assert np.allclose(bench.preprocessor["mean"], pix.mean((0, 1, 2)), atol=1e-6)
    assert np.allclose(bench.preprocessor["std"], pix.std((0, 1, 2)), atol=1e-6)
    cache = json.loads((tmp_path / "lists" / "stats_cache.json").read_text())
    assert next(iter(cache.values()))["mean"] == bench.preprocessor["mean"]


def test_ms_mode_filters_only_the_chosen_parts(data, tmp_path):  # noqa: F811
    plain = {"image_size": 32, "resize": 32, "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3}
    base = cell(data, tmp_path, plain)
    bench = cell(data, tmp_path, {**plain, "ms_mode": {"mode": "lpf", "magnitude": 4, "parts": ["test_anomalous", "train_oe"]}})
    pixels = PixelSpace(plain)
    for split, filtered in (("id_train", False), ("id_test", False), ("anomalies", True)):
        x = base.dataset(base.split(split))[0][0]
        y = bench.dataset(bench.split(split))[0][0]
        want = pixels.from_unit(fourier_filter(pixels.to_unit(x[None]), "lpf", 4))[0] if filtered else x
        assert torch.allclose(y, want, atol=1e-5), split
    assert hasattr(bench, "wrap_outlier_source") and not hasattr(base, "wrap_outlier_source")


def test_multiscale_sweep_one_row_per_magnitude(capsys, data, tmp_path):  # noqa: F811
    cfg = write_cfg(tmp_path, data, pipeline="ad_sweep", ad_sweep={"magnitudes": [0, 4]},
                    **{"ad.classes": ["c0"], "trainer.outliers.limit": 2,
                       "benchmark.preprocessor.ms_mode": {"mode": "hpf", "magnitude": 0}})
    code, err = cli(capsys, "run", "--config", str(cfg))
    assert code == 0, err
    run_dir = tmp_path / "results" / "eoe"
    with open(run_dir / "sweep.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["value"] for r in rows] == ["0", "4"]
    assert rows[0]["key"] == "benchmark.preprocessor.ms_mode.magnitude"
    oe = json.loads((run_dir / "magnitude_4" / "normal_c0" / "seed_0" / "result.json").read_text())["outliers"]
    assert oe["source"].startswith("fourier_filter hpf e=4") and oe["limit"] == 2 and len(oe["subset"]) == 2
