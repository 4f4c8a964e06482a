"""VMDLS's deterministic noise OOD sets (openood_ext/datasets/noise_sets.py) and the benchmark configs that
name them: pixel formulas by hand, determinism, the written layout, bad input, and absent sets reported."""

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from openood_ext.datasets.noise_sets import add_noise, main, uniform_noise, write_noise_set
from openood_ext.errors import ConfigError, DataError
from openood_ext.pipelines.context import build_benchmark


def _source(tmp_path, n=3):
    root = tmp_path / "data"
    (root / "images_classic" / "clean").mkdir(parents=True)
    lines = []
    for i in range(n):
        a = np.zeros((6, 6), np.uint8)
        a[2:4, 2:4] = 255                                 # a white stroke on black, as MNIST
        Image.fromarray(a).save(root / "images_classic" / "clean" / f"{i}.png")
        lines.append(f"clean/{i}.png {i}\n")
    lst = tmp_path / "clean.txt"
    lst.write_text("".join(lines))
    return root, lst


def test_uniform_noise_formulas_and_determinism():
    a = uniform_noise(4, 5, 1, seed=3)
    u = np.random.default_rng(3).random((4, 5, 5, 1))
    assert a.dtype == np.uint8 and a.shape == (4, 5, 5, 1)
    np.testing.assert_array_equal(a, np.rint(u * 255).astype(np.uint8))
    np.testing.assert_array_equal(a, uniform_noise(4, 5, 1, seed=3))
    assert not np.array_equal(a, uniform_noise(4, 5, 1, seed=4))
    # published: mean + std * u, so that (pixel - mean) / std = u after the benchmark's normalisation
    p = uniform_noise(4, 5, 3, seed=3, published=True, mean=[0.5, 0.4, 0.3], std=[0.5, 0.2, 0.1]).astype(float) / 255
    u3 = np.random.default_rng(3).random((4, 5, 5, 3))
    np.testing.assert_allclose((p - [0.5, 0.4, 0.3]) / [0.5, 0.2, 0.1], u3, atol=0.5 / 255 / 0.1 + 1e-9)
    with pytest.raises(ConfigError, match="channels"):
        uniform_noise(1, 5, 2, seed=0)


def test_add_noise_is_clipped_shift_in_pixel_units():
    img = np.array([[[[0], [255]]]], np.uint8)           # [1, 1, 2, 1]: black and white pixel
    out = add_noise(img, np.random.default_rng(0), std=0.5)
    u = np.random.default_rng(0).random((1, 1, 2, 1))
    assert out[0, 0, 0, 0] == np.rint(0.5 * u[0, 0, 0, 0] * 255)   # exact on the background
    assert out[0, 0, 1, 0] == 255                                      # saturated on the stroke


def test_write_noise_sets_layout_and_cli(tmp_path):
    root, lst = _source(tmp_path)
    out = write_noise_set("noisy", root, "bench", source_list=lst, seed=1)
    assert out == root / "benchmark_imglist" / "bench" / "test_clean_noise.txt"
    lines = out.read_text().splitlines()
    assert lines == [f"clean_noise/{i:05d}.png 0" for i in range(3)]
    first = np.asarray(Image.open(root / "images_classic" / "clean_noise" / "00000.png"))
    assert first.shape == (6, 6) and first[2, 2] == 255 and first[0, 0] <= 128
    again = write_noise_set("noisy", root, "bench", name="again", source_list=lst, seed=1)
    assert np.array_equal(first, np.asarray(Image.open(root / "images_classic" / "again" / "00000.png")))
    assert again.name == "test_again.txt"
    assert main(["--root", str(root), "--benchmark", "bench", "--kind", "uniform", "--count", "2",
                 "--size", "4"]) == 0
    noise = np.asarray(Image.open(root / "images_classic" / "noise" / "00001.png"))
    assert noise.shape == (4, 4)
    assert main(["--root", str(root), "--benchmark", "bench", "--kind", "noisy"]) == 2   # no source list


def test_bad_input(tmp_path):
    root, lst = _source(tmp_path)
    with pytest.raises(ConfigError, match="kind"):
        write_noise_set("gaussian", root, "bench")
    with pytest.raises(ConfigError, match="source_list"):
        write_noise_set("noisy", root, "bench")
    (root / "images_classic" / "clean" / "1.png").unlink()
    with pytest.raises(DataError, match=r"clean.txt:2: image .* not found"):
        write_noise_set("noisy", root, "bench", source_list=lst)


@pytest.mark.parametrize("name,absent", [
    ("vmdls_mnist", {"omniglot", "id_train", "id_val"}),
    ("vmdls_fmnist", {"omniglot"}),
    ("vmdls_cifar10", {"imagenet_crop", "imagenet_resize", "lsun_crop", "lsun_resize"}),
])
def test_benchmark_configs_report_absent_sets(tmp_path, name, absent):
    cfg = OmegaConf.load(f"configs/benchmarks/{name}.yml")
    cfg.benchmark.data_root = str(tmp_path)               # an empty root: nothing generated, nothing extracted
    cfg.benchmark.imglist_dir = [str(tmp_path / "lists")]
    bench = build_benchmark(cfg)
    names = {s.name for s in bench.splits()}
    assert absent <= names
    for s in bench.splits():
        if s.name in absent:
            assert "not found" in bench.missing_reason(s)
