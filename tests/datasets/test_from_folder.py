"""``openood-ext data from-folder``: a class-per-folder tree plus OOD folders -> image lists + config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openood_ext import cli as cli_module
from openood_ext.config import load_config
from openood_ext.datasets import BENCHMARKS
from openood_ext.datasets.from_folder import from_folder
from openood_ext.datasets.imglist import read_imglist
from openood_ext.errors import ConfigError, DataError


def tree(root: Path, classes=("bolt", "nut", "washer"), per_class=20, ood=("junk", "other"), size=10) -> Path:
    rng = np.random.default_rng(0)
    for k, cls in enumerate(classes):
        for i in range(per_class + k):  # unequal class sizes
            (root / "parts" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / "parts" / cls / f"{i:03d}.png")
    for name in ood:
        (root / name / "sub").mkdir(parents=True, exist_ok=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / name / "sub" / f"{i}.jpg")
    return root / "parts"


def test_lists_and_config_are_written_and_load(tmp_path):
    ids = tree(tmp_path / "src")
    out = tmp_path / "repo"
    res = from_folder(ids, "parts", far=[str(tmp_path / "src/junk")], near=[f"close={tmp_path / 'src/other'}"],
                      out=out, image_size=8)
    assert res.classes == ["bolt", "nut", "washer"] and res.data_root == tmp_path / "src"
    assert res.counts == {"train_parts.txt": 45, "val_parts.txt": 6, "test_parts.txt": 12,  # 20/21/22 images: 2+4 held out each
                          "test_close.txt": 6, "test_junk.txt": 6}
    train = read_imglist(out / "benchmark_imglist/parts/train_parts.txt")
    assert train[0].path.startswith("parts/bolt/") and train[0].label == 0
    assert {e.label for e in train} == {0, 1, 2}
    all_id = [e.path for f in ("train", "val", "test") for e in read_imglist(out / f"benchmark_imglist/parts/{f}_parts.txt")]
    assert len(all_id) == len(set(all_id)) == 63  # disjoint, complete
    cfg = load_config([res.config], [f"benchmark.imglist_dir={res.imglist_dir}"])
    assert cfg.benchmark.preprocessor.channels == 3 and cfg.benchmark.num_classes == 3
    assert set(cfg.benchmark.ood.near) == {"close"} and set(cfg.benchmark.ood.far) == {"junk"}
    bench = BENCHMARKS.build(cfg.benchmark)
    img, label = bench.dataset(bench.split("close"))[0]
    assert img.shape == (3, 8, 8) and label == -1
    assert 0.3 < cfg.benchmark.preprocessor.mean[0] < 0.7  # measured on uniform noise images


def test_split_is_deterministic_and_seeded(tmp_path):
    ids = tree(tmp_path / "src", ood=())
    a = from_folder(ids, "a", out=tmp_path / "a")
    b = from_folder(ids, "a", out=tmp_path / "b")
    c = from_folder(ids, "a", out=tmp_path / "c", seed=1)
    read = lambda r: (r.imglist_dir / "val_a.txt").read_text()  # noqa: E731
    assert read(a) == read(b) and read(a) != read(c)


def test_cli_from_folder_and_refusals(tmp_path, monkeypatch, capsys):
    ids = tree(tmp_path / "src")
    monkeypatch.chdir(tmp_path)
    assert cli_module.main(["data", "from-folder", str(ids), "--name", "parts", "--ood", str(tmp_path / "src/junk")]) == 0
    assert "test_junk.txt: 6 images" in capsys.readouterr().out
    text = (tmp_path / "configs/benchmarks/parts.yml").read_text()
    assert "imglist_dir: benchmark_imglist/parts" in text and "0=bolt, 1=nut, 2=washer" in text
    # exists -> refused without --force, one line
    code = cli_module.main(["data", "from-folder", str(ids), "--name", "parts"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "exists" in err[0] and "--force" in err[0]
    assert cli_module.main(["data", "from-folder", str(ids), "--name", "parts", "--force"]) == 0


def test_bad_trees_are_refused(tmp_path):
    ids = tree(tmp_path / "src", per_class=2)
    with pytest.raises(DataError, match="class folder 'bolt' has 2 image"):
        from_folder(ids, "x", out=tmp_path / "o")
    with pytest.raises(ConfigError, match="inside the ID folder"):
        from_folder(tree(tmp_path / "s2"), "x", far=[str(tmp_path / "s2/parts/bolt")], out=tmp_path / "o")
    (tmp_path / "one" / "only").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "one/only/a.png")
    with pytest.raises(DataError, match="need at least 2"):
        from_folder(tmp_path / "one", "x", out=tmp_path / "o")
    spaced = tree(tmp_path / "s3", ood=())
    Image.new("RGB", (4, 4)).save(spaced / "nut" / "a b.png")
    with pytest.raises(DataError, match="white space"):
        from_folder(spaced, "x", out=tmp_path / "o")
