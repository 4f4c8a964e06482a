"""The decoded-image cache and the tensor training path: pixels equal to the per-image path's, stale and
truncated caches rebuilt, bad input reported as the per-image path reports it, and training batches that
equal the DataLoader's (no augmentation) and repeat on rerun and after resume."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from openood_ext.datasets import Benchmark
from openood_ext.datasets.batch_source import TensorBatchSource
from openood_ext.datasets.data_settings import DataSettings
from openood_ext.datasets.decoded_cache import DecodedCache, NotSmall, check_cache_dir
from openood_ext.datasets.imglist import ImglistDataset
from openood_ext.datasets.tensor_recipe import geometry, tensor_pipeline, unsupported
from openood_ext.datasets.transforms import build_transform
from openood_ext.errors import ConfigError, DataError
from openood_ext.trainers import Trainer
from openood_ext.trainers.data import build_train_loader, tensor_train_source

PRE = {"image_size": 8, "resize": 8, "channels": 3, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}


def make_images(root, n=12, sizes=((8, 8), (11, 9), (8, 12)), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
        lines.append(f"img/{i}.png {i % classes}")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    return root / "list.txt"


def dataset(root, pre=PRE, train=False, **kw):
    return ImglistDataset(root / "list.txt", root, build_transform(pre, train), "RGB" if pre["channels"] == 3 else "L", **kw)


@pytest.fixture
def images(tmp_path):
    make_images(tmp_path)
    return tmp_path


def test_cached_pixels_over_255_equal_the_per_image_tensors(images, tmp_path):
    for pre in (PRE, {**PRE, "resize": 10, "channels": 1, "mean": [0.5], "std": [0.5]}):  # resize + crop, grey
        ds = dataset(images, pre)
        decoded = DecodedCache(tmp_path / "cache").load(ds, geometry(pre))
        batch = tensor_pipeline(pre)(decoded.images, torch.Generator())
        expected = torch.stack([ds[i][0] for i in range(len(ds))])
        assert decoded.images.dtype == torch.uint8 and torch.allclose(batch, expected, atol=1e-6)
        assert torch.equal(decoded.labels, ds.labels())


def test_second_load_reads_the_cache_and_changed_images_rebuild_it(images, tmp_path, caplog):
    cache = DecodedCache(tmp_path / "cache")
    first = cache.load(dataset(images), geometry(PRE))
    assert first.source == "decoded" and cache.load(dataset(images), geometry(PRE)).source == "cache"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / "img" / "3.png")  # changed after caching
    os.utime(images / "img" / "3.png", ns=(1, 1))
    with caplog.at_level(logging.INFO, logger="openood_ext"):
        again = cache.load(dataset(images), geometry(PRE))
    assert again.source == "decoded" and "stale" in caplog.text
    assert int(again.images[3].sum()) == 0 and torch.equal(again.images[:3], first.images[:3])


def test_truncated_cache_is_rebuilt(images, tmp_path, caplog):
    cache = DecodedCache(tmp_path / "cache")
    cache.load(dataset(images), geometry(PRE))
    array, _ = cache.paths(dataset(images), geometry(PRE))
    array.write_bytes(array.read_bytes()[:-50])
    with caplog.at_level(logging.INFO, logger="openood_ext"):
        again = cache.load(dataset(images), geometry(PRE))
    assert again.source == "decoded" and "truncated" in caplog.text and len(again) == 12


def test_disk_full_while_writing_removes_the_partial_cache_and_trains_from_memory(images, tmp_path, monkeypatch, caplog):
    real_save = np.save

    def full_disk(fh, arr, *a, **k):
        fh.write(b"\x93NUMPY partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)
    with caplog.at_level(logging.WARNING, logger="openood_ext"):
        decoded = DecodedCache(tmp_path / "cache").load(dataset(images), geometry(PRE))
    monkeypatch.setattr(np, "save", real_save)
    assert decoded.source == "memory" and len(decoded) == 12
    assert list((tmp_path / "cache").iterdir()) == []
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "\n" not in lines[0]


def test_cache_dir_that_is_a_file_or_read_only_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match=r"data.cache_dir .*f is a file, expected a directory"):
        check_cache_dir(tmp_path / "f" / "decoded")
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access  # root may write anywhere: the permission check is what is tested
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == ro else real_access(p, mode))
    with pytest.raises(ConfigError, match=r"data.cache_dir .*ro/decoded: .*ro is not writable \(give another "
                                          r"directory or data.cache: false\)"):
        check_cache_dir(ro / "decoded")


def test_a_bad_data_section_stops_the_run_before_anything_exists(tmp_path):
    from openood_ext.config import load_config
    from openood_ext.pipelines.validation import validate_run
    from conftest import REPO
    for override, fragment in (("+data.backend=gpu", "data.backend"), (f"+data.cache_dir={tmp_path / 'f' / 'x'}", "data.cache_dir .* is a file")):
        (tmp_path / "f").write_text("")
        cfg = load_config([REPO / "configs" / "pipelines" / "train.yml"], [override, f"output_dir={tmp_path / 'out'}"])
        with pytest.raises(ConfigError, match=fragment):
            validate_run(cfg)
        assert not (tmp_path / "out").exists()


def test_bad_images_and_labels_are_reported_as_the_per_image_path_does(images, tmp_path):
    (images / "img" / "5.png").unlink()
    with pytest.raises(DataError, match=r"5.png: missing image \(listed at .*list.txt:6\)"):
        DecodedCache(tmp_path / "c").load(dataset(images), geometry(PRE))
    (images / "img" / "5.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"5.png: unreadable image .*list.txt:6\)"):
        DecodedCache(tmp_path / "c").load(dataset(images), geometry(PRE))
    skipped = DecodedCache(tmp_path / "c").load(dataset(images, on_bad_image="skip"), geometry(PRE))
    assert len(skipped) == 11 and skipped.skipped == 1
    with pytest.raises(DataError, match=r"list.txt:3: label 2 is outside 0..1"):
        dataset(images, num_classes=2)


def test_a_large_image_stops_decoding_naming_it(images, tmp_path):
    Image.fromarray(np.zeros((70, 20, 3), np.uint8)).save(images / "img" / "4.png")
    with pytest.raises(NotSmall, match=r"4.png is 20x70 \(listed at .*list.txt:5\), larger than data.max_side 64"):
        DecodedCache(tmp_path / "c", max_side=64).load(dataset(images), geometry(PRE))
    big = {**PRE, "image_size": 224, "resize": 224}  # small files, but a recipe that blows them up
    with pytest.raises(NotSmall, match=r"list.txt: images are resized to 224 px, larger than data.max_side 64"):
        DecodedCache(tmp_path / "c", max_side=64).load(dataset(images, big), geometry(big))


def test_data_section_is_typed_and_defaults_under_the_cache_dir():
    assert DataSettings.from_config({"cache_dir": "/x"}).cache_dir == "/x/decoded"
    assert DataSettings.from_config({"output_dir": "out"}).cache_root() is None  # no cache_dir: memory only
    assert DataSettings.from_config({"data": {"cache": False}}).cache_root() is None
    with pytest.raises(ConfigError, match=r"data.backend"):
        DataSettings.from_config({"data": {"backend": "gpu"}})
    with pytest.raises(ConfigError, match=r"data: unknown key\(s\) 'max_sid'"):
        DataSettings.from_config({"data": {"max_sid": 3}})


def test_vmdls_rotation_and_resized_crop_have_batched_ops_with_the_recipes_parameters():
    from openood_ext.datasets import batch_transforms as bt
    pre = {**PRE, "train_augment": ["random_rotation", "random_resized_crop"], "rotation_degrees": 15,
           "resized_crop_scale": [0.95, 1.0]}
    assert unsupported(pre, True) is None
    rotate, crop = tensor_pipeline(pre, train=True).ops[:2]
    assert isinstance(rotate, bt.Rotate) and rotate.degrees == 15
    assert isinstance(crop, bt.ResizedCrop) and crop.scale == (0.95, 1.0) and crop.size == 8


def test_unsupported_transforms_are_named():
    assert unsupported({**PRE, "train_augment": ["random_crop", "hflip", "color_jitter", "gaussian_noise"]}, True) is None
    assert "train_augment: autoaugment" in unsupported({**PRE, "train_augment": ["autoaugment"]}, True)
    assert "train_crop: random" in unsupported({**PRE, "train_crop": "random"}, True)
    assert unsupported({**PRE, "train_crop": "random"}, False) is None


# ------------------------------------------------------------------------------ the training path
def bench(root, pre=PRE):
    return Benchmark(num_classes=3, id={"train": "list.txt", "val": "list.txt", "test": "list.txt"},
                     imglist_dir=str(root), data_root=str(root), preprocessor=pre)


def test_tensor_batches_equal_the_dataloaders_without_augmentation(images, tmp_path):
    b, trainer = bench(images), Trainer()
    data = DataSettings(backend="tensor", cache_dir=str(tmp_path / "cache"))
    pil = build_train_loader(b, trainer, 5, seed=3)
    tensor = build_train_loader(b, trainer, 5, seed=3, data=data)
    assert isinstance(tensor, TensorBatchSource) and len(tensor) == len(pil) == 3
    for _ in range(2):  # two epochs: the same shuffles
        for (x, y, _), (xt, yt, _) in zip(pil, tensor, strict=True):
            assert torch.equal(y, yt) and torch.allclose(x, xt, atol=1e-6)


def test_augmented_batches_repeat_with_the_seed_and_after_restoring_the_generator(images, tmp_path):
    pre = {**PRE, "train_augment": ["random_crop", "hflip", "color_jitter", "gaussian_noise"], "jitter": 0.3}
    data = DataSettings(backend="tensor", cache_dir=str(tmp_path / "cache"))
    a = build_train_loader(bench(images, pre), Trainer(), 4, seed=1, data=data)
    b = build_train_loader(bench(images, pre), Trainer(), 4, seed=1, data=data)
    first = [x for x, _, _ in a]
    assert all(torch.equal(x, y) for x, y in zip(first, [x for x, _, _ in b]))
    state = a.generator.get_state()  # what the engine saves after an epoch
    second = [x for x, _, _ in a]
    b.generator.set_state(state)
    assert all(torch.equal(x, y) for x, y in zip(second, [x for x, _, _ in b]))
    assert not torch.equal(first[0], second[0])


def test_auto_falls_back_to_pil_naming_the_transform_and_tensor_refuses(images, tmp_path, caplog):
    pre = {**PRE, "train_augment": ["autoaugment_like"]}
    b = bench(images, pre)
    with caplog.at_level(logging.INFO, logger="openood_ext"):
        assert tensor_train_source(b, Trainer(), 4, 0, DataSettings(cache_dir=str(tmp_path)), "cpu") is None
    assert "per-image PIL path (benchmark.preprocessor.train_augment: autoaugment_like)" in caplog.text
    with pytest.raises(ConfigError, match="data.backend: tensor cannot run this recipe .*autoaugment_like"):
        build_train_loader(b, Trainer(), 4, 0, data=DataSettings(backend="tensor", cache_dir=str(tmp_path)))
