"""Every registered benchmark is built from its default config (``configs/benchmarks/<name>.yml``) with the data
root pointed at an empty folder, so nothing is downloaded: its splits (ID train/val/test and at least one OOD or
anomaly set) are declared and ``missing_reason`` says, without raising, why each split cannot be read. Benchmarks
read from a folder tree refuse an absent tree with a one-line DataError saying where to get it. The embedded
``digits`` benchmark is materialised and read for real. Benchmarks without a default config are built from tiny
files written here. One test id per benchmark."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from conftest import REPO, write_class_set

from openood_ext.config import to_plain
from openood_ext.datasets import BENCHMARKS
from openood_ext.errors import DataError
from sweep_helpers import builtin_names

CONFIGS = REPO / "configs" / "benchmarks"
ID_GROUPS = {"id_train", "id_val", "id_test"}
OOD_GROUPS = {"ood_val", "near", "far"}
PRE = {"image_size": 28, "resize": 28, "channels": 1, "mean": [0.5], "std": [0.5], "train_augment": []}


def _imglist(tmp_path):
    write_class_set(tmp_path, "band", (("train", 2), ("val", 1), ("test", 1), ("ood", 1)), np.random.default_rng(0))
    return {"name": "imglist", "num_classes": 3, "data_root": str(tmp_path), "imglist_dir": str(tmp_path / "lists"),
            "preprocessor": PRE, "id": {"train": "train.txt", "val": "val.txt", "test": "test.txt"},
            "ood": {"far": {"toy_ood": "ood.txt"}}}


def _ad_folder(tmp_path):
    root = tmp_path / "ovr"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((28, 28), 60 * i + 10, np.uint8)).save(root / split / cls / f"{i}.png")
    return {"name": "ad_folder", "root": str(root), "normal_class": "a", "preprocessor": PRE,
            "derived_dir": str(tmp_path / "lists")}


def _mvtec_tree(tmp_path):
    """A fake MVTec-AD 'bottle' tree (as in test_ad_pipeline.py)."""
    root = tmp_path / "mvtec_tree"
    for i in range(2):
        (root / "bottle" / "train" / "good").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 40), (100,) * 3).save(root / "bottle" / "train" / "good" / f"{i:03d}.png")
    (root / "bottle" / "test" / "good").mkdir(parents=True)
    Image.new("RGB", (40, 40), (100,) * 3).save(root / "bottle" / "test" / "good" / "000.png")
    (root / "bottle" / "test" / "broken_large").mkdir(parents=True)
    (root / "bottle" / "ground_truth" / "broken_large").mkdir(parents=True)
    Image.new("RGB", (40, 40), (200,) * 3).save(root / "bottle" / "test" / "broken_large" / "000.png")
    Image.new("L", (40, 40), 255).save(root / "bottle" / "ground_truth" / "broken_large" / "000_mask.png")
    return {"root": str(root), "normal_class": "bottle", "derived_dir": str(tmp_path / "lists")}


# benchmarks without a default config: a config built on tiny files
NO_CONFIG = {"imglist": _imglist, "ad_folder": _ad_folder}
# benchmarks read from a folder tree: (overrides building them on a fake tree, or None) -- without data they
# must refuse to build with a one-line DataError
FOLDER_TREES = {"mvtec": _mvtec_tree, "imagenet30": None}


def _default_config(name, tmp_path):
    path = CONFIGS / f"{name}.yml"
    assert path.is_file(), f"benchmark {name!r} has neither {path.name} nor an entry in NO_CONFIG"
    cfg = to_plain(OmegaConf.load(path).benchmark)
    assert cfg["name"] == name, f"{path.name} builds {cfg['name']!r}"
    return cfg


def _check_declared(bench, name):
    splits = bench.splits()
    groups = {s.group for s in splits}
    assert ID_GROUPS <= groups, (name, groups)
    assert groups & OOD_GROUPS, f"{name} declares no OOD/anomaly set: {groups}"
    for group in ID_GROUPS:
        assert bench.split(group).group == group
    assert len({s.name for s in splits}) == len(splits), f"{name}: two splits share a name"
    return splits


@pytest.mark.parametrize("name", builtin_names(BENCHMARKS))
def test_registered_benchmark_declares_its_splits(name, tmp_path, monkeypatch):
    empty = tmp_path / "no_data"
    empty.mkdir()
    monkeypatch.setenv("OPENOOD_EXT_DATA", str(empty))
    if name in NO_CONFIG:
        bench = BENCHMARKS.build(NO_CONFIG[name](tmp_path))
        for split in _check_declared(bench, name):
            assert bench.missing_reason(split) is None, (name, split.name)  # written above
        return
    cfg = _default_config(name, tmp_path)
    if name in FOLDER_TREES:
        with pytest.raises(DataError) as info:
            BENCHMARKS.build(cfg)
        msg = str(info.value)
        assert "\n" not in msg and str(empty) in msg, msg  # says which folder is missing, on one line
        if FOLDER_TREES[name] is None:
            return
        bench = BENCHMARKS.build({**cfg, **FOLDER_TREES[name](tmp_path)})
        for split in _check_declared(bench, name):
            assert bench.missing_reason(split) is None, (name, split.name)
        return
    bench = BENCHMARKS.build(cfg)
    splits = _check_declared(bench, name)
    for split in splits:
        reason = bench.missing_reason(split)
        assert reason is None or (isinstance(reason, str) and reason), (name, split.name, reason)
    if name != "digits":
        assert all(bench.missing_reason(s) for s in splits), f"{name}: a split is readable from an empty folder"
        return
    # embedded: materialised from scikit-learn / scikit-image data, no download
    bench.prepare()
    for split in splits:
        assert bench.missing_reason(split) is None, (name, split.name)
    image, label = bench.dataset(bench.split("id_train"))[0][:2]
    pre = cfg["preprocessor"]
    assert tuple(image.shape) == (pre["channels"], pre["image_size"], pre["image_size"])
    assert 0 <= int(label) < cfg["num_classes"]
