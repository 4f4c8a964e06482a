"""``openood-ext bench loader`` on tiny sizes: both backends see every image once per epoch, the recipes
load from the repository's configs, and the training comparison runs the same number of steps."""

from __future__ import annotations

import argparse

import pytest
from data_helpers import need_shared

from openood_ext.bench import loader as bench_loader


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    shared = need_shared("cifar10_train.tar").parent
    root = tmp_path_factory.mktemp("bench_loader")
    return root, bench_loader.cifar_images(shared, 48, root)


def args(**kw):
    return argparse.Namespace(**{"batch_size": 16, "workers": 0, "epochs": 1, "train_steps": 2,
                                 "train_batch_size": 8, "rounds": 1, **kw})


@pytest.mark.parametrize("recipe", ["openood_cifar10", "eoe_cifar10"])
def test_each_backend_reads_every_image_of_the_recipe(cifar, recipe):
    root, imglist = cifar
    bench = bench_loader.recipe_benchmark(recipe, imglist, root)
    assert bench.preprocessor["train_augment"]  # the recipe's own augmentation, from its config
    r = bench_loader.bench_recipe(recipe, bench, args(), root / "cache")
    assert r["images"] == 48 and r["pil_cpu_ms"] > 0 and r["tensor_cpu_ms"] > 0
    assert r["ratio_cpu"] == pytest.approx(r["pil_cpu_ms"] / r["tensor_cpu_ms"])


@pytest.mark.slow  # two short engine runs of eoe_cnn32
@pytest.mark.parametrize("recipe", ["eoe_cifar10", "openood_cifar10"])
def test_training_comparison_runs_the_same_steps_with_each_backend(cifar, recipe):
    root, imglist = cifar
    t = bench_loader.bench_training(bench_loader.recipe_benchmark(recipe, imglist, root), args(), root / "cache")
    assert t["steps"] == 2 and t["images"] == 16
    assert t["ratio"] == pytest.approx(t["tensor"]["img_s"] / t["pil"]["img_s"])
