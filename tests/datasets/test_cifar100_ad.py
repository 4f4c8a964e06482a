"""CIFAR-100 one-vs-rest over its 20 superclasses (benchmark ``cifar100_ad``): the fine-to-coarse map, the
normal class expanded to its 5 fine classes, and ``groups: fine`` (EOE's code: the 100 fine classes)."""

from __future__ import annotations

import pytest

from openood_ext.datasets import BENCHMARKS
from openood_ext.datasets.imglist import read_imglist
from openood_ext.datasets.openood_benchmarks import CIFAR100_FINE, cifar100_coarse_of_fine
from openood_ext.errors import ConfigError
from openood_ext.pipelines.ad.settings import benchmark_classes

# CIFAR-100's coarse label of every fine label 0..99, as the dataset's meta file gives them
COARSE = [4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
          0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
          10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2, 4, 6, 19, 5, 5, 8, 19,
          18, 1, 2, 15, 6, 0, 17, 8, 14, 13]


def test_fine_to_coarse_map_is_the_datasets():
    assert cifar100_coarse_of_fine() == COARSE
    assert CIFAR100_FINE[:3] == ("apple", "aquarium_fish", "baby") and CIFAR100_FINE[-1] == "worm"


def bench(tmp_path, **spec):
    lists = tmp_path / "lists"
    lists.mkdir(exist_ok=True)
    for name, n in (("train", 2), ("val", 1), ("test", 1)):
        (lists / f"{name}.txt").write_text("".join(f"{name}/{f}_{i}.png {f}\n" for f in range(100) for i in range(n)))
    return BENCHMARKS.build({"name": "cifar100_ad", "num_classes": 100, "data_root": str(tmp_path / "d"),
                             "imglist_dir": str(lists), "id": {"train": "train.txt", "val": "val.txt",
                                                              "test": "test.txt"}, **spec})


def labels_of(b, split):
    return sorted({int(e.path.split("/")[1].split("_")[0]) for e in read_imglist(b.split(split).imglist)})


def test_superclass_normal_class_is_its_five_fine_classes(tmp_path):
    b = bench(tmp_path, normal_class=17, merge_val_into="test")  # trees
    trees = [f for f in range(100) if COARSE[f] == 17]
    assert labels_of(b, "id_train") == trees and labels_of(b, "id_test") == trees
    assert labels_of(b, "anomalies") == sorted(set(range(100)) - set(trees))
    assert len(read_imglist(b.split("id_test").imglist)) + len(read_imglist(b.split("anomalies").imglist)) == 200
    assert [CIFAR100_FINE[f] for f in trees] == ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"]


def test_fine_groups_and_the_class_lists(tmp_path):
    assert labels_of(bench(tmp_path, normal_class=17, groups="fine"), "id_train") == [17]
    assert benchmark_classes({"name": "cifar100_ad"}) == list(range(20))
    assert benchmark_classes({"name": "cifar100_ad", "groups": "fine"}) == list(range(100))
    with pytest.raises(ConfigError, match="superclass indices 0..19"):
        bench(tmp_path, normal_class=20)
