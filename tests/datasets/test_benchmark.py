"""Data problems as the pipelines meet them: absent OOD sets are skipped (and said so), corrupt or missing
images either stop the run naming file and image-list line, or are skipped and counted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from openood_ext import cli as cli_module
from openood_ext.datasets import BENCHMARKS
from openood_ext.datasets.imglist import ImglistDataset, SkipCounter
from openood_ext.errors import DataError

IMG = 12


def save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8), "L").save(path)


def synthetic_benchmark(root: Path) -> Path:
    """Two separable ID classes (bright top / bright bottom), a noise OOD set, a flat OOD set with one
    corrupt and one missing image, a list whose images are all absent, and a set with no list at all."""
    rng = np.random.default_rng(0)
    data, lists = root / "data", root / "lists"
    lists.mkdir(parents=True)
    split_lines = {"train": [], "val": [], "test": []}
    for cls in (0, 1):
        for i in range(40):
            img = rng.normal(40, 10, (IMG, IMG))
            rows = slice(0, IMG // 2) if cls == 0 else slice(IMG // 2, IMG)
            img[rows] += 160
            rel = f"id/{cls}/{i:03d}.png"
            save(data / rel, np.clip(img, 0, 255))
            split = "train" if i < 24 else "val" if i < 28 else "test"
            split_lines[split].append(f"{rel} {cls}")
    for split, lines in split_lines.items():
        (lists / f"{split}.txt").write_text("\n".join(lines) + "\n")
    noise = []
    for i in range(12):
        save(data / f"noise/{i:03d}.png", rng.integers(0, 256, (IMG, IMG)))
        noise.append(f"noise/{i:03d}.png -1")
    (lists / "test_noise.txt").write_text("\n".join(noise) + "\n")
    flat = []
    for i in range(10):
        save(data / f"flat/{i:03d}.png", np.full((IMG, IMG), 20 * i))
        flat.append(f"flat/{i:03d}.png -1")
    (data / "flat/003.png").write_bytes(b"\x89PNG\r\n\x1a\n definitely not an image")
    (data / "flat/007.png").unlink()
    (lists / "test_flat.txt").write_text("\n".join(flat) + "\n")
    (lists / "test_elsewhere.txt").write_text("nowhere/0.png -1\nnowhere/1.png -1\n")
    config = root / "bench.yml"
    config.write_text(f"""\
_base_: []
pipeline: test_ood
experiment: missing_sets
seed: 0
device: cpu
output_dir: {root / 'results'}
cache_dir: null
batch_size: 16
num_workers: 0
plugins: []
train_if_missing: true
evaluator: ood
postprocessors: [msp, ebo, {{name: knn, k: 3}}]
benchmark:
  name: imglist
  title: synthetic
  data_root: {data}
  imglist_dir: {lists}
  num_classes: 2
  on_bad_image: skip
  preprocessor: {{image_size: {IMG}, channels: 1, mean: [0.4], std: [0.3], train_augment: []}}
  id: {{train: train.txt, val: val.txt, test: test.txt}}
  ood:
    near: {{noise: test_noise.txt, elsewhere: test_elsewhere.txt}}
    far: {{flat: test_flat.txt, unlisted: test_unlisted.txt}}
network: {{name: digits_cnn, num_classes: 2, in_channels: 1, width: 8, checkpoint: {root / 'net.pt'}}}
trainer: {{name: base, epochs: 3, batch_size: 16, optimizer: {{name: sgd, lr: 0.05}}}}
""")
    return config


@pytest.fixture(scope="module")
def missing_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("missing_sets")
    config = synthetic_benchmark(root)
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_module.main(["run", "--config", str(config)])
    assert code == 0, err.getvalue()[-2000:]
    return root, out.getvalue(), json.loads((root / "results/missing_sets/metrics.json").read_text())


def test_absent_sets_are_skipped_and_reported(missing_run):
    root, stdout, metrics = missing_run
    skipped = metrics["skipped_sets"]
    assert set(skipped) == {"elsewhere", "unlisted"}
    assert skipped["elsewhere"]["group"] == "near" and "none of its 2 images" in skipped["elsewhere"]["reason"]
    assert skipped["unlisted"]["group"] == "far" and "test_unlisted.txt not found" in skipped["unlisted"]["reason"]
    msp = metrics["postprocessors"]["msp"]["groups"]
    assert msp["near"]["partial"] and msp["near"]["sets"] == ["noise"] and msp["near"]["skipped_sets"] == ["elsewhere"]
    assert msp["far"]["partial"] and msp["far"]["sets"] == ["flat"]
    assert "skipped OOD sets (group means marked * are partial): elsewhere (near)" in stdout
    table = stdout.split("== AUROC")[0]
    msp_line = next(line for line in table.splitlines() if line.startswith("msp "))
    assert msp_line.count("*") >= 2  # near and far means are both partial


def test_skipped_images_are_counted_per_split(missing_run):
    _, stdout, metrics = missing_run
    assert metrics["skipped_images"] == {"flat": 2}
    assert "unreadable images skipped: flat: 2" in stdout
    scores = np.load(Path(missing_run[0]) / "results/missing_sets/scores/msp.npz")
    assert scores["flat__conf"].shape == (8,) and scores["noise__conf"].shape == (12,)


def flat_dataset(tmp_path: Path, on_bad_image: str) -> ImglistDataset:
    rng = np.random.default_rng(1)
    for i in range(4):
        save(tmp_path / f"img/{i}.png", rng.integers(0, 256, (IMG, IMG)))
    (tmp_path / "img/2.png").write_bytes(b"GIF89a garbage")
    (tmp_path / "list.txt").write_text("# header\nimg/0.png 0\nimg/1.png 1\nimg/2.png 0\nimg/9.png 1\nimg/3.png 0\n")
    import torchvision.transforms as T
    return ImglistDataset(tmp_path / "list.txt", tmp_path, T.ToTensor(), mode="L", on_bad_image=on_bad_image)


def test_corrupt_image_error_names_file_and_list_line(tmp_path):
    ds = flat_dataset(tmp_path, "error")
    assert ds[0][0].shape == (1, IMG, IMG)
    with pytest.raises(DataError) as exc:
        ds[2]
    msg = str(exc.value)
    assert msg.startswith(f"{tmp_path / 'img/2.png'}: unreadable image") and f"{tmp_path / 'list.txt'}:4" in msg
    with pytest.raises(DataError, match=r"img/9\.png: missing image \(listed at .*list\.txt:5\)"):
        ds[3]
    loader = torch.utils.data.DataLoader(ds, batch_size=5, collate_fn=SkipCounter())
    with pytest.raises(DataError, match="unreadable image"):
        next(iter(loader))


def test_corrupt_image_skip_counts_it(tmp_path):
    ds = flat_dataset(tmp_path, "skip")
    collate = SkipCounter()
    batches = list(torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate))
    assert [len(b[0]) for b in batches] == [2, 1] and [b[2] for b in batches] == [1, 1]
    assert collate.skipped == 2
    assert torch.cat([b[1] for b in batches]).tolist() == [0, 1, 0]


def test_on_bad_image_from_benchmark_config(tmp_path):
    flat_dataset(tmp_path, "error")
    for name in ("train.txt", "val.txt", "test.txt"):
        (tmp_path / name).write_text((tmp_path / "list.txt").read_text())
    spec = {"name": "imglist", "num_classes": 2, "data_root": str(tmp_path), "imglist_dir": str(tmp_path),
            "preprocessor": {"image_size": IMG, "channels": 1, "mean": [0.5], "std": [0.5]},
            "id": {"train": "train.txt", "val": "val.txt", "test": "test.txt"}}
    strict = BENCHMARKS.build({**spec, "on_bad_image": "error"})
    with pytest.raises(DataError, match=r"test\.txt:4"):
        list(strict.loader(strict.split("id_test"), batch_size=8))
    lenient = BENCHMARKS.build({**spec, "on_bad_image": "skip"})
    (images, labels, skipped), = list(lenient.loader(lenient.split("id_test"), batch_size=8))
    assert len(images) == 3 and skipped == 2
