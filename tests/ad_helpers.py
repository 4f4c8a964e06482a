"""The tiny anomaly-detection setting shared by the AD, launcher and torchrun tests: a 3-class 28x28 set
(``labelled``, module-scoped fixture), its benchmark block and a one-epoch FCDD run config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import toy_benchmark, write_class_set
from omegaconf import OmegaConf

PRE = {"image_size": 28, "resize": 28, "channels": 1, "mean": [0.5], "std": [0.5], "train_augment": []}


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """A 3-class 28x28 set (class c = brightness pattern c) with train/val/test lists."""
    root = tmp_path_factory.mktemp("ovr")
    rng = np.random.default_rng(0)
    write_class_set(root, "band", (("train", 8), ("val", 2), ("test", 6)), rng)
    return root


def bench_spec(root: Path) -> dict:
    return toy_benchmark(root, "mnist", PRE)


def make_cfg(tmp: Path, bench: dict, ad: dict, **top) -> OmegaConf:
    cfg = {"pipeline": "ad", "experiment": top.pop("experiment", "ad_test"), "seed": 0, "device": "cpu",
           "output_dir": str(tmp / "results"), "num_workers": 0, "batch_size": 64, "benchmark": bench,
           "network": {"name": "fcdd_cnn28", "in_channels": 1, "image_size": 28},
           "trainer": {"name": "fcdd", "supervise_mode": "noise", "epochs": 1, "batch_size": 16,
                       "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True},
                       "scheduler": {"name": "constant"}, "outliers": {"name": "confetti", "mode": "noise"}},
           "ad": {"heatmaps": 2, **ad}, **top}
    return OmegaConf.create(cfg)
