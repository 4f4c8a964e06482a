"""oe_images as EOE uses it: equal numbers of normals and outliers in every step (the short last batch
too, as EOE's BalancedConcatLoader), and ``limit_classes`` (EOE's ``oe_limit_classes``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from openood_ext.datasets import BENCHMARKS
from openood_ext.errors import ConfigError
from openood_ext.synthesizers import SYNTHESIZERS, SourceContext
from openood_ext.trainers import Batch


@pytest.fixture(scope="module")
def bench_and_oe(tmp_path_factory):
    """A tiny benchmark and an OE folder of 3 classes (a: 2 images, b: 3, c: 4), grey level = 10 * index."""
    root = tmp_path_factory.mktemp("oe_classes")
    (root / "id").mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (10 * i, 20, 30)).save(root / "id" / f"{i}.png")
    k = 0
    for cls, n in (("a", 2), ("b", 3), ("c", 4)):
        (root / "oe" / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (10 * k,) * 3).save(root / "oe" / cls / f"{i}.png")
            k += 1
    (root / "train.txt").write_text("".join(f"id/{i}.png 0\n" for i in range(4)))
    bench = BENCHMARKS.build({"name": "imglist", "num_classes": 1, "data_root": str(root), "imglist_dir": str(root),
                              "id": {"train": "train.txt", "val": "train.txt", "test": "train.txt"},
                              "preprocessor": {"image_size": 8, "channels": 3, "mean": [0.0] * 3, "std": [1.0] * 3}})
    return bench, root


def source(spec, bench, seed=0, batch_size=4, steps=3, key=None):
    src = SYNTHESIZERS.build(spec)
    src.setup(SourceContext(bench, torch.device("cpu"), seed, batch_size, steps, subset_key=key))
    src.check()
    return src


def batch_of(n, index=0):
    return Batch(torch.zeros(n, 3, 8, 8), torch.zeros(n, dtype=torch.long), None, 0, index, index)


def test_every_step_pairs_as_many_outliers_as_normals(bench_and_oe):
    bench, root = bench_and_oe
    src = source({"name": "oe_images", "folder": str(root / "oe"), "augment": False}, bench)
    src.on_epoch_start(0)
    # 10 normals in batches of 4: 4, 4, 2 -> 4, 4, 2 outliers (EOE: the OE batch cut to the normal batch)
    assert [len(src.draw(batch_of(n, i))) for i, n in enumerate((4, 4, 2))] == [4, 4, 2]
    fixed = source({"name": "oe_images", "folder": str(root / "oe"), "augment": False, "batch_size": 4}, bench)
    fixed.on_epoch_start(0)
    assert len(fixed.draw(batch_of(2))) == 4  # an explicit outlier batch size is kept


def test_limit_classes_keeps_the_images_of_k_drawn_classes(bench_and_oe):
    bench, root = bench_and_oe
    folder_class = {0: "a", 1: "a", 2: "b", 3: "b", 4: "b", 5: "c", 6: "c", 7: "c", 8: "c"}
    seen = set()
    for key in range(6):
        src = source({"name": "oe_images", "folder": str(root / "oe"), "limit_classes": 1}, bench, key=key)
        assert len(src.classes) == 1
        files = {src.dataset.entries[i].path for i in src.pool}
        assert {f.split("/")[0] for f in files} == set(src.classes)  # every image of that class, nothing else
        assert len(files) == {"a": 2, "b": 3, "c": 4}[src.classes[0]]
        seen.add(src.classes[0])
        assert [folder_class[i] for i in src.pool] == [src.classes[0]] * len(src.pool)
    assert len(seen) > 1  # drawn anew per class x seed (subset_key)
    both = source({"name": "oe_images", "folder": str(root / "oe"), "limit_classes": 2, "limit": 2}, bench, key=1)
    assert len(both.pool) == 2 and {both.dataset.entries[i].path.split("/")[0] for i in both.pool} <= set(both.classes)


def test_limit_classes_uses_list_labels_when_present(bench_and_oe, tmp_path):
    bench, root = bench_and_oe
    lst = tmp_path / "oe.txt"
    lst.write_text("".join(f"oe/c/{i}.png {i % 2}\n" for i in range(4)))
    src = source({"name": "oe_images", "imglist": str(lst), "image_dir": str(root), "limit_classes": 1}, bench, key=3)
    labels = np.array([src.dataset.entries[i].label for i in src.pool])
    assert len(src.pool) == 2 and (labels == src.classes[0]).all()


def test_limit_classes_errors_name_the_key(bench_and_oe):
    bench, root = bench_and_oe
    with pytest.raises(ConfigError, match=r"limit_classes: 4 is larger than the number of classes .*\(3 in folder"):
        source({"name": "oe_images", "folder": str(root / "oe"), "limit_classes": 4}, bench)
    with pytest.raises(ConfigError, match=r"limit: 5 is larger than the outlier set of the 1 drawn classes"):
        source({"name": "oe_images", "folder": str(root / "oe"), "limit_classes": 1, "limit": 5}, bench)


def _planned(order, pool, steps, batch, train_size, seed=0):
    from types import SimpleNamespace

    from openood_ext.synthesizers.oe_images import OEImages
    src = OEImages(order=order)
    src.ctx = SimpleNamespace(seed=seed, steps_per_epoch=steps, train_size=train_size)
    src.out_batch, src.pool = batch, np.asarray(pool)
    return src


def test_published_order_shuffles_the_repeated_pool_at_once():
    # EOE: 300 normals, pool of 7 -> the pool repeated ceil(300 / 7) = 43 times, one permutation per epoch
    src = _planned("published", range(7), steps=3, batch=128, train_size=300)
    for epoch in range(2):
        flat = [i for b in src.epoch_indices(epoch) for i in b]
        assert [len(b) for b in src.epoch_indices(epoch)] == [128, 128, 45]
        assert np.array_equal(np.bincount(flat), [43] * 7)
    cyc = _planned("cycle", range(7), steps=3, batch=128, train_size=300)
    first = [i for b in cyc.epoch_indices(0) for i in b][:7]
    assert sorted(first) == list(range(7))  # cycle: every pass over the pool holds each image once


def test_published_order_samples_large_pools_with_replacement():
    src = _planned("published", range(10_000), steps=2, batch=100, train_size=200)
    flat = np.array([i for b in src.epoch_indices(0) for i in b])
    assert len(flat) == 200
    # with replacement over 10,000 draws of 10,000: about 1 - 1/e of the pool appears; without: all of it
    full = _planned("published", range(10_000), steps=100, batch=100, train_size=10_000)
    seen = np.unique([i for b in full.epoch_indices(0) for i in b])
    assert 0.55 < len(seen) / 10_000 < 0.7
    small = _planned("published", range(9_999), steps=100, batch=100, train_size=9_999)
    assert len(np.unique([i for b in small.epoch_indices(0) for i in b])) == 9_999
