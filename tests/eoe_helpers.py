"""The tiny EOE setting shared by the AD-sweep and Fourier-filter tests: 32x32 class folders (``data``,
module-scoped fixture), a config writer for both custom-folder layouts, and the CLI called in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from openood_ext.cli import main as cli_main

PRE = {"image_size": 32, "resize": 32, "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3,
       "train_augment": [], "normalize": "normal_class"}


def _save(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """``ovr/{train,test}/<c>/`` (3 classes: channel c bright), ``na/`` (normal/anomalous layout of class
    'a'), ``oe/`` (10 noise images)."""
    root = tmp_path_factory.mktemp("eoe")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 4)):
        for c in range(3):
            for i in range(n):
                img = rng.integers(0, 80, (32, 32, 3)).astype(np.uint8)
                img[..., c] += 150
                _save(root / "ovr" / split / f"c{c}" / f"{i}.png", img)
                if c < 2:
                    _save(root / "na" / split / "a" / ("normal" if c == 0 else "anomalous") / f"{i}.png", img)
    for i in range(10):
        _save(root / "oe" / f"{i}.png", rng.integers(0, 255, (32, 32, 3)).astype(np.uint8))
    return root


def write_cfg(tmp: Path, data: Path, *, layout: str = "ovr", objective: str = "eoe_hsc", **extra) -> Path:
    cfg = {"pipeline": "ad", "experiment": "eoe", "seed": 0, "device": "cpu", "output_dir": str(tmp / "results"),
           "num_workers": 0, "batch_size": 16,
           "benchmark": {"name": "ad_folder", "root": str(data / layout), "derived_dir": str(tmp / "lists"),
                         "preprocessor": dict(PRE)},
           "network": {"name": "eoe_cnn32", "clf": objective in ("eoe_bce", "eoe_focal")},
           "trainer": {"name": objective, "epochs": 1, "batch_size": 4,
                       "optimizer": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0},
                       "scheduler": {"name": "constant"},
                       "outliers": {"name": "oe_images", "folder": str(data / "oe"), "limit": None}},
           "ad": {"classes": "all", "seeds": 1, "heatmaps": 0}}
    for key, value in extra.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path = tmp / "cfg.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli(capsys, *args: str) -> tuple[int, str]:
    """``openood-ext ARGS`` in this process: (exit status, stderr)."""
    capsys.readouterr()
    code = cli_main(list(args))
    return code, capsys.readouterr().err


def run(capsys, cfg: Path, *overrides: str) -> tuple[int, str]:
    return cli(capsys, "run", "--config", str(cfg), *overrides)
