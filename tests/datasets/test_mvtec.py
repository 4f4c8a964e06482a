"""``openood-ext data prepare mvtec``: a small synthetic archive in MVTec-AD's exact layout (textures with pasted
defects from openood_ext.synthesizers.defects), ingested as the whole archive, as per-class archives and as an
extracted folder; lists as the ``mvtec`` benchmark reads them; bad input; then the ``ad`` pipeline with FCDD
and the pixel evaluator on the prepared set."""

from __future__ import annotations

import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from openood_ext import cli as cli_module
from openood_ext.datasets.prepare import prepare
from openood_ext.datasets.prepare.archives import _journal
from openood_ext.errors import DataError
from openood_ext.synthesizers.defects import paste_defect, texture

CLASSES = {"carpet": ("stripes", 3), "grid": ("dots", 1)}  # MVTec class -> (texture, channels); grid is grayscale
DEFECTS = ("color", "hole")
SIZE = 28


def _save(arr, path: Path, channels: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    u8 = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    Image.fromarray(np.repeat(u8[..., None], 3, axis=2) if channels == 3 else u8).save(path)


def make_mvtec_tree(root: Path, n_train=12, n_good=4, n_defect=3) -> Path:
    """<root>/<class>/{train/good, test/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png}."""
    for k, (cls, (kind, ch)) in enumerate(CLASSES.items()):
        rng = np.random.default_rng([7, k])
        for i in range(n_train):
            _save(texture(kind, SIZE, rng), root / cls / "train" / "good" / f"{i:03d}.png", ch)
        for i in range(n_good):
            _save(texture(kind, SIZE, rng), root / cls / "test" / "good" / f"{i:03d}.png", ch)
        for d in DEFECTS:
            for i in range(n_defect):
                img, mask = paste_defect(texture(kind, SIZE, rng), rng)
                _save(img, root / cls / "test" / d / f"{i:03d}.png", ch)
                _save(mask.astype(float), root / cls / "ground_truth" / d / f"{i:03d}_mask.png", 1)
    (root / "license.txt").write_text("synthetic\n")
    return root


def pack(tree: Path, archive: Path, members: list[str], arc_prefix: str = "") -> Path:
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for m in members:
                for f in sorted((tree / m).rglob("*")) if (tree / m).is_dir() else [tree / m]:
                    if f.is_file():
                        zf.write(f, arc_prefix + f.relative_to(tree).as_posix())
    else:
        with tarfile.open(archive, "w:xz" if archive.name.endswith(".xz") else "w:gz") as tf:
            for m in members:
                tf.add(tree / m, arc_prefix + m)
    return archive


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_mvtec_tree(tmp_path_factory.mktemp("mvtec_src") / "extracted")


@pytest.fixture(scope="module")
def whole(tree, tmp_path_factory) -> Path:
    return pack(tree, tmp_path_factory.mktemp("arch") / "mvtec_anomaly_detection.tar.xz", [*CLASSES, "license.txt"])


@pytest.fixture(scope="module")
def prepared(whole, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    prepare("mvtec", root, [whole])
    return root


def lists_of(root: Path) -> dict[str, str]:
    base = root / "mvtec_anomaly_detection" / ".imglists"
    return {p.relative_to(base).as_posix(): p.read_text() for p in sorted(base.rglob("*.txt"))}


def test_without_from_says_where_to_get_it(tmp_path, capsys):
    assert cli_module.main(["data", "prepare", "mvtec", "--root", str(tmp_path)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "mvtec.com/company/research/datasets/mvtec-ad" in err[0] and "--from" in err[0]
    assert not (tmp_path / "mvtec_anomaly_detection").exists()


def test_whole_archive_cli(whole, tree, tmp_path, capsys):
    code = cli_module.main(["data", "prepare", "mvtec", "--root", str(tmp_path), "--from", str(whole)])
    out = capsys.readouterr().out
    assert code == 0 and "carpet: 28 images" in out and "normal_grid/test_anomalies.txt: 6 images" in out
    dest = tmp_path / "mvtec_anomaly_detection"
    src_files = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*.png"))
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.png")) == src_files
    assert all((dest / f).read_bytes() == (tree / f).read_bytes() for f in src_files)  # streamed, not re-encoded
    assert not (dest / ".extracting.json").exists()
    lists = lists_of(tmp_path)
    assert sorted(lists) == [f"normal_{c}/{f}" for c in sorted(CLASSES)
                             for f in ("test_anomalies.txt", "test_normal.txt", "train.txt")]
    rows = lists["normal_carpet/test_anomalies.txt"].splitlines()
    assert rows[0] == "carpet/test/color/000.png -1" and len(rows) == 6
    assert lists["normal_carpet/train.txt"].splitlines()[11] == "carpet/train/good/011.png 0"


def test_per_class_archives_leading_folder_and_folder_give_the_same_lists(tree, prepared, tmp_path):
    reference = lists_of(prepared)
    a = pack(tree, tmp_path / "carpet.tar.gz", ["carpet"])
    b = pack(tree, tmp_path / "grid.zip", ["grid"], arc_prefix="mvtec_anomaly_detection/")
    r1 = tmp_path / "per_class"
    rep = prepare("mvtec", r1, [a, b])
    assert lists_of(r1) == reference and rep.ingested["carpet"] == 28 and "normal_bottle" in rep.absent
    r2 = tmp_path / "folder"
    prepare("mvtec", r2, [tree])
    assert lists_of(r2) == reference and (r2 / "mvtec_anomaly_detection" / "carpet").is_symlink()
    prepare("mvtec", r2)  # no --from, tree present: re-check and re-list only
    assert lists_of(r2) == reference


def test_lists_match_the_benchmark(prepared):
    from openood_ext.datasets import BENCHMARKS
    before = lists_of(prepared)
    b = BENCHMARKS.build({"name": "mvtec", "root": str(prepared / "mvtec_anomaly_detection"), "normal_class": "grid"})
    assert lists_of(prepared) == before and b.defects == list(DEFECTS)
    from openood_ext.pipelines.ad.protocol import benchmark_classes
    assert benchmark_classes({"name": "mvtec", "root": str(prepared / "mvtec_anomaly_detection")}) == ["carpet", "grid"]


def test_bad_input_writes_no_list(tree, tmp_path):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(tree, bad)
    mask = bad / "grid" / "ground_truth" / "hole" / "001_mask.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(mask)
    with pytest.raises(DataError, match=r"mask .*grid/ground_truth/hole/001_mask.png is 20x20 but its image "
                                        r".*grid/test/hole/001.png is 28x28"):
        prepare("mvtec", tmp_path / "r1", [bad])
    assert not (tmp_path / "r1" / "mvtec_anomaly_detection" / ".imglists").exists()
    mask.unlink()
    with pytest.raises(DataError, match=r"grid/test/hole/001.png: ground-truth mask .*001_mask.png not found"):
        prepare("mvtec", tmp_path / "r2", [bad])
    junk = tmp_path / "junk.tar.gz"
    with tarfile.open(junk, "w:gz") as tf:
        tf.add(tree / "carpet" / "train", "cifar10/train")
    with pytest.raises(DataError, match="not an MVTec-AD archive"):
        prepare("mvtec", tmp_path / "r3", [junk])
    with pytest.raises(DataError, match="no such file"):
        prepare("mvtec", tmp_path / "r3", [tmp_path / "absent.tar.xz"])


def test_interrupted_extraction_blocks_the_lists(whole, tmp_path):
    dest = tmp_path / "mvtec_anomaly_detection"
    dest.mkdir()
    _journal(dest, whole, done=False)  # as a killed extraction leaves it
    (dest / "carpet" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match=r"extracting mvtec_anomaly_detection.tar.xz was interrupted"):
        prepare("mvtec", tmp_path)
    assert not (dest / ".imglists").exists()
    prepare("mvtec", tmp_path, [whole])  # rerunning with the archive completes it
    assert not (dest / ".extracting.json").exists() and (dest / ".imglists" / "normal_carpet" / "train.txt").is_file()


def test_ad_pipeline_fcdd_with_pixel_auroc_on_the_prepared_set(prepared, tmp_path):
    """FCDD (28x28 net, 2 epochs, confetti + ground-truth map path) on the prepared synthetic MVTec set, both
    classes: per-class pixel AUROC from the pixel evaluator equals scikit-learn's on the saved maps."""
    from omegaconf import OmegaConf

    from openood_ext.runner import run_config
    cfg = OmegaConf.create({
        "pipeline": "ad", "experiment": "mvtec_synth", "seed": 0, "device": "cpu", "num_workers": 0,
        "output_dir": str(tmp_path / "results"), "batch_size": 32,
        "benchmark": {"name": "mvtec", "root": str(prepared / "mvtec_anomaly_detection"), "normal_class": "carpet",
                      "preprocessor": {"image_size": SIZE, "resize": SIZE, "channels": 3, "mean": [0.5] * 3,
                                       "std": [0.5] * 3, "train_augment": []}},
        "network": {"name": "fcdd_cnn28", "in_channels": 3, "image_size": SIZE},
        "trainer": {"name": "fcdd", "supervise_mode": "malformed_normal", "gt_path": True, "epochs": 2,
                    "batch_size": 6, "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True},
                    "scheduler": {"name": "constant"}, "outliers": {"name": "confetti", "mode": "malformed_normal"}},
        "ad": {"classes": "all", "seeds": 1, "heatmaps": 2, "keep_heatmaps": True}})
    out = run_config(cfg)
    run = Path(out["run_dir"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert sorted(metrics["per_class"]) == ["carpet", "grid"]
    for cls in CLASSES:
        cell = run / f"normal_{cls}" / "seed_0"
        result = json.loads((cell / "result.json").read_text())
        heat, masks = np.load(cell / "heatmaps.npy"), np.load(cell / "masks.npy")
        assert heat.shape == masks.shape == (10, SIZE, SIZE) and masks[:4].sum() == 0 and masks[4:].sum() > 0
        assert result["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), heat.ravel()))
        assert 0 <= result["auroc"] <= 1
    assert metrics["pixel_auroc_mean"] == pytest.approx(
        np.mean([metrics["per_class"][c]["pixel_auroc_mean"] for c in CLASSES]))


def test_semi_supervised_fcdd_trains_on_defect_masks(prepared, tmp_path, monkeypatch):
    """FCDD's mvtec_gt recipe end to end (one defect image per type, p = 1 so every sample is one, two
    concatenated batches): every loss the trainer computes uses the defects' own masks (resized nearest with
    the image, FCDD's lcnaug1 geometry at raw_size), never the all-ones map."""
    from omegaconf import OmegaConf

    from openood_ext.runner import run_config
    from openood_ext.trainers import fcdd as fcdd_mod
    seen = []
    plain = fcdd_mod.fcdd_loss

    def spy(a, labels, gt=None, *args, **kw):
        seen.append(None if gt is None else gt.detach().clone())
        return plain(a, labels, gt, *args, **kw)

    monkeypatch.setattr(fcdd_mod, "fcdd_loss", spy)
    cfg = OmegaConf.create({
        "pipeline": "ad", "experiment": "mvtec_semi", "seed": 0, "device": "cpu", "num_workers": 0,
        "output_dir": str(tmp_path / "results"), "batch_size": 32,
        "benchmark": {"name": "mvtec", "root": str(prepared / "mvtec_anomaly_detection"), "normal_class": "carpet",
                      "oe_defects": 1,
                      "preprocessor": {"image_size": SIZE, "raw_size": SIZE + 4, "resize": SIZE, "channels": 3,
                                       "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "nearest",
                                       "train_crop": "choice", "train_augment": []}},
        "network": {"name": "fcdd_cnn28", "in_channels": 3, "image_size": SIZE},
        "trainer": {"name": "fcdd", "supervise_mode": "noise", "gt_path": True, "p_outlier": 1.0, "epochs": 1,
                    "batch_size": 3, "accumulate": 2, "accumulate_mode": "concat",
                    "optimizer": {"name": "sgd", "lr": 0.01}, "scheduler": {"name": "constant"},
                    "outliers": {"name": "oe_images", "split": "oe", "masks": True}},
        "ad": {"classes": ["carpet"], "seeds": 1, "heatmaps": 0}})
    run_config(cfg)
    assert seen and all(g is not None for g in seen)
    for g in seen:
        assert g.shape[1:] == (1, SIZE, SIZE) and set(g.unique().tolist()) <= {0.0, 1.0}
        assert bool((g.flatten(1).mean(1) < 1).all())  # real masks, not all ones
        assert bool((g.flatten(1).amax(1) == 1).all())  # every sample is a defect with pixels marked


@pytest.mark.slow  # a whole AD cell each (about 25 s on a shared CPU)
@pytest.mark.parametrize("supervisor", ["online", "offline"])
def test_fcdd_mvtec_recipe_shape_trains_with_dataset_side_anomalies(prepared, tmp_path, supervisor):
    """The MVTec recipe's training set on the prepared set (stored size, crop-or-resize, jitter, noise,
    ``epoch_repeats``, confetti made before the transform): one AD cell trains and scores, the engine draws
    no outliers, and offline half of the epoch's items are anomalies."""
    from omegaconf import OmegaConf

    from openood_ext.runner import run_config
    from openood_ext.synthesizers.confetti import Confetti
    cfg = OmegaConf.create({
        "pipeline": "ad", "experiment": f"mvtec_{supervisor}", "seed": 0, "device": "cpu", "num_workers": 0,
        "output_dir": str(tmp_path / "results"), "batch_size": 32,
        "benchmark": {"name": "mvtec", "root": str(prepared / "mvtec_anomaly_detection"), "normal_class": "carpet",
                      "preprocessor": {"image_size": SIZE, "resize": SIZE, "raw_size": SIZE + 4, "channels": 3,
                                       "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "nearest",
                                       "train_crop": "choice", "train_augment": ["jitter_choice", "relative_noise"]}},
        "network": {"name": "fcdd_cnn28", "in_channels": 3, "image_size": SIZE},
        "trainer": {"name": "fcdd", "supervise_mode": "malformed_normal", "gt_path": True, "epochs": 1,
                    "epoch_repeats": 3, "batch_size": 8, "optimizer": {"name": "sgd", "lr": 0.01},
                    "scheduler": {"name": "constant"},
                    "outliers": {"name": "confetti", "mode": "malformed_normal", "supervisor": supervisor,
                                 "side_range": [3, 6], "prob": 0.01, "prob_dark": 0.005}},
        "ad": {"classes": ["carpet"], "seeds": 1, "heatmaps": 0}})
    drawn = []
    plain = Confetti.draw
    Confetti.draw = lambda self, batch: drawn.append(1) or plain(self, batch)
    try:
        out = run_config(cfg)
    finally:
        Confetti.draw = plain
    assert not drawn
    cell = Path(out["run_dir"]) / "normal_carpet" / "seed_0"
    history = json.loads((cell / "history.json").read_text())
    assert len(history) == 1 and 0 < history[0]["frac_anomalous"] < 1
    if supervisor == "offline":
        assert history[0]["frac_anomalous"] == pytest.approx(0.5)
    assert 0 <= json.loads((cell / "result.json").read_text())["auroc"] <= 1
