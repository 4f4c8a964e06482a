"""One-vs-rest on the full splits (``merge_val_into``): EOE and FCDD test on the whole 10,000-image CIFAR-10
test split and train on every training image, while OpenOOD's lists cut a val list out of one of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from openood_ext.config import load_config
from openood_ext.datasets import BENCHMARKS
from openood_ext.datasets.imglist import read_imglist

REPO = Path(__file__).resolve().parents[2]


def tiny(tmp_path, into):
    lists = tmp_path / "lists"
    lists.mkdir(exist_ok=True)
    (lists / "train.txt").write_text("".join(f"tr/{c}/{i}.png {c}\n" for c in range(3) for i in range(4)))
    (lists / "val.txt").write_text("".join(f"va/{c}/0.png {c}\n" for c in range(3)))
    (lists / "test.txt").write_text("".join(f"te/{c}/{i}.png {c}\n" for c in range(3) for i in range(2)))
    return BENCHMARKS.build({"name": "cifar10_ad", "normal_class": 1, "num_classes": 3, "data_root": str(tmp_path / "d"),
                             "imglist_dir": str(lists), "merge_val_into": into,
                             "id": {"train": "train.txt", "val": "val.txt", "test": "test.txt"}})


def paths(bench, split):
    return [e.path for e in read_imglist(bench.split(split).imglist)]


def test_val_goes_back_into_the_test_or_the_training_lists(tmp_path):
    plain, test, train = tiny(tmp_path, None), tiny(tmp_path, "test"), tiny(tmp_path, "train")
    assert paths(plain, "id_test") == ["te/1/0.png", "te/1/1.png"]
    assert paths(test, "id_test") == ["te/1/0.png", "te/1/1.png", "va/1/0.png"]
    assert paths(test, "anomalies") == ["te/0/0.png", "te/0/1.png", "te/2/0.png", "te/2/1.png", "va/0/0.png", "va/2/0.png"]
    assert paths(test, "id_train") == paths(plain, "id_train")
    assert paths(train, "id_train") == [f"tr/1/{i}.png" for i in range(4)] + ["va/1/0.png"]
    assert paths(train, "anomalies") == paths(plain, "anomalies")
    # each setting derives its own lists: a cache keyed by the list never mixes them
    assert len({plain.derived_dir, test.derived_dir, train.derived_dir}) == 3


@pytest.mark.parametrize("config, split, n", [("eoe_cifar10_ad", "id_test", 10_000), ("eoe_fmnist_ad", "id_train", 6_000)])
def test_eoe_benchmarks_use_the_full_published_splits(config, split, n, tmp_path):
    cfg = load_config([REPO / "configs" / "benchmarks" / f"{config}.yml"],
                      [f"benchmark.data_root={tmp_path}", "benchmark.normal_class=3"])
    bench = BENCHMARKS.build(cfg.benchmark)
    if split == "id_test":  # the whole CIFAR-10 test split: 1,000 normals + 9,000 anomalies
        assert len(paths(bench, "id_test")) + len(paths(bench, "anomalies")) == n
        assert len(paths(bench, "id_test")) == 1_000
    else:  # every Fashion-MNIST training image of the class
        assert len(paths(bench, "id_train")) == n
