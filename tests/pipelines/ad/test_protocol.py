"""The ``ad`` pipeline: one-vs-rest / leave-one-out labels, resume mid-protocol, custom-folder layouts,
pixel AUROC on the synthetic defect set, and bad input. Tiny data, FCDD_CNN28 for one epoch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ad_helpers import PRE, bench_spec, labelled, make_cfg  # noqa: F401  (labelled: fixture)
from PIL import Image
from sklearn.metrics import roc_auc_score

from openood_ext.errors import ConfigError, DataError
from openood_ext.pipelines.ad import protocol as ad_mod
from openood_ext.pipelines.ad.settings import ADSettings, cell_benchmark, collect_test_set
from openood_ext.runner import run_config
from openood_ext.synthesizers.defects import make_defect_set

def test_one_vs_rest_and_leave_one_out_labels(labelled, tmp_path):
    spec = bench_spec(labelled)
    for protocol, anomalous_classes in (("one_vs_rest", {1, 2}), ("leave_one_out", {1})):
        cfg = make_cfg(tmp_path, spec, {"protocol": protocol})
        settings = ADSettings.from_config(cfg)
        assert settings.classes == [0, 1, 2] and settings.seeds == [0]
        bench = cell_benchmark(cfg, settings, 1 if protocol == "leave_one_out" else 0)
        _, paths, is_anom = collect_test_set(bench, None)
        truth = {int(Path(p).name.split("_")[0]) for p, a in zip(paths, is_anom) if a}
        normal = {int(Path(p).name.split("_")[0]) for p, a in zip(paths, is_anom) if not a}
        assert truth == anomalous_classes and normal.isdisjoint(truth) and len(paths) == 18
        train = {int(Path(e.path).name.split("_")[0]) for e in bench.dataset(bench.split("id_train")).entries}
        assert train == ({0} if protocol == "one_vs_rest" else {0, 2})


def test_bad_protocol_settings(labelled, tmp_path):
    spec = bench_spec(labelled)
    with pytest.raises(ConfigError, match=r"ad.classes: 7 is not a class"):
        ADSettings.from_config(make_cfg(tmp_path, spec, {"classes": [7]}))
    with pytest.raises(ConfigError, match=r"ad.seeds: expected int >= 1, got 0"):
        ADSettings.from_config(make_cfg(tmp_path, spec, {"seeds": 0}))
    with pytest.raises(ConfigError, match="ad.protocol"):
        ADSettings.from_config(make_cfg(tmp_path, spec, {"protocol": "ovr"}))
    assert ADSettings.from_config(make_cfg(tmp_path, spec, {"seeds": 3}, seed=4)).seeds == [4, 5, 6]



@pytest.mark.parametrize("section, key", [
    ({"seeds": 0}, "seeds"), ({"seeds": [1, -1]}, "seeds"), ({"protocol": "ovr"}, "protocol"),
    ({"train_limit": True}, "train_limit"), ({"test_limit": 0}, "test_limit"), ({"heatmaps": -1}, "heatmaps"),
    ({"heatmap_quantile": 0}, "heatmap_quantile"), ({"keep_heatmaps": "yes"}, "keep_heatmaps"),
    ({"note": 3}, "note"), ({"launcher": "local"}, "launcher"), ({"clases": [0]}, "clases")])
def test_the_ad_section_is_schema_checked_without_data(labelled, tmp_path, section, key):
    """The typed fields reject a bad value before any benchmark is read: through the generic schema
    check (what run validation calls, via ``config_sections``) and through ``from_config``, naming the key."""
    from openood_ext.pipelines.ad import ADPipeline
    from openood_ext.pipelines.ad.oe_search import OESearchPipeline
    from openood_ext.pipelines.ad.sweep import ADSweepPipeline
    from openood_ext.schema import check_arguments
    for pipe in (ADPipeline, ADSweepPipeline, OESearchPipeline):
        assert pipe.config_sections["ad"] is ADSettings
    with pytest.raises(ConfigError, match=f"'{key}'") as exc:
        check_arguments("ad", ADSettings, section)
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match=f"ad(: unknown key.*|.){key}") as exc:
        ADSettings.from_config(make_cfg(tmp_path, {"name": "no_such_benchmark"}, section))
    assert "\n" not in str(exc.value)
    check_arguments("ad", ADSettings, {"classes": "all", "seeds": [3, 4], "protocol": "leave_one_out",
                                       "heatmap_quantile": 1, "launcher": {"backend": "local"}})


def test_resume_mid_protocol(labelled, tmp_path, monkeypatch):
    spec = bench_spec(labelled)
    ad = {"classes": [0, 1], "seeds": 1, "heatmaps": 0}
    ref = run_config(make_cfg(tmp_path, spec, ad, experiment="ref"))
    calls = []
    original = ad_mod.run_cell

    def flaky(cfg, settings, ctx, cls, seed):
        calls.append(cls)
        if cls == 1 and calls.count(1) == 1:
            raise KeyboardInterrupt  # killed during the second class
        return original(cfg, settings, ctx, cls, seed)

    monkeypatch.setattr(ad_mod, "run_cell", flaky)  # the protocol's loop calls the cell function through its module
    with pytest.raises(KeyboardInterrupt):
        run_config(make_cfg(tmp_path, spec, ad, experiment="killed"))
    partial = tmp_path / "results" / "killed.partial"
    assert (partial / "normal_0" / "seed_0" / "result.json").is_file()
    assert not (partial / "normal_1" / "seed_0" / "result.json").exists()
    done0 = (partial / "normal_0" / "seed_0" / "result.json").stat().st_mtime_ns
    out = run_config(make_cfg(tmp_path, spec, ad, experiment="killed", resume=True))
    final = Path(out["run_dir"])
    assert (final / "normal_0" / "seed_0" / "result.json").stat().st_mtime_ns == done0  # not redone
    assert "class 0 seed 0: already done" in (final / "log.txt").read_text()
    assert out["per_class"] == pytest.approx(ref["per_class"])
    metrics = json.loads((final / "metrics.json").read_text())
    assert metrics["n_classes"] == 2 and (final / "metrics.csv").is_file() and (final / "report.html").is_file()
    assert (final / "plots" / "roc_per_class.png").is_file()


@pytest.fixture(scope="module")
def defects(tmp_path_factory) -> Path:
    return make_defect_set(tmp_path_factory.mktemp("defects") / "custom", n_train=16, n_train_anomalous=4,
                           n_test_normal=6, n_test_anomalous=6)


def test_defect_set_is_deterministic(defects, tmp_path):
    again = make_defect_set(tmp_path / "again", n_train=16, n_train_anomalous=4, n_test_normal=6, n_test_anomalous=6)
    a = sorted(p.relative_to(defects) for p in defects.rglob("*.png"))
    assert a == sorted(p.relative_to(again) for p in again.rglob("*.png"))
    assert all((defects / p).read_bytes() == (again / p).read_bytes() for p in a)


def test_pixel_auroc_on_synthetic_defects(defects, tmp_path):
    bench = {"name": "ad_folder", "root": str(defects), "normal_class": "stripes", "preprocessor": PRE,
             "derived_dir": str(tmp_path / "lists")}
    cfg = make_cfg(tmp_path, bench, {"classes": ["stripes"], "keep_heatmaps": True})
    cfg.trainer.supervise_mode = "other"  # the training anomalies of train/stripes/anomalous
    cfg.trainer.outliers = {"name": "oe_images", "split": "oe"}
    out = run_config(cfg)
    cell = Path(out["run_dir"]) / "normal_stripes" / "seed_0"
    result = json.loads((cell / "result.json").read_text())
    heat, masks = np.load(cell / "heatmaps.npy"), np.load(cell / "masks.npy")
    assert heat.shape == masks.shape == (12, 28, 28) and masks[:6].sum() == 0 and masks[6:].sum() > 0
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), heat.ravel()))
    metrics = json.loads((Path(out["run_dir"]) / "metrics.json").read_text())
    assert metrics["pixel_auroc_mean"] == pytest.approx(result["pixel_auroc"])
    assert (cell / "heatmaps_paper_global_lbl1.png").is_file() and (cell / "heatmaps_extremes_global.png").is_file()
    # an oracle heatmap (the masks themselves, blurred) ranks defect pixels first
    from openood_ext.evaluators.pixel import PixelEvaluator
    from scipy.ndimage import gaussian_filter
    oracle = np.stack([gaussian_filter(m.astype(float), 1.0) for m in masks])
    assert PixelEvaluator().evaluate(oracle, masks)["pixel_auroc"] > 0.95


def test_folder_layouts(defects, tmp_path):
    from openood_ext.datasets import BENCHMARKS
    b = BENCHMARKS.build({"name": "ad_folder", "root": str(defects), "normal_class": "dots",
                          "derived_dir": str(tmp_path / "na"), "preprocessor": PRE})
    assert b.layout == "normal_anomalous" and b.has_masks and b.oe_split is not None
    _, paths, is_anom = collect_test_set(b, None)
    assert all(("anomalous" in p) == bool(a) for p, a in zip(paths, is_anom))
    # one-vs-rest layout: images directly in the class folders
    ovr = tmp_path / "ovr"
    for split in ("train", "test"):
        for cls in ("a", "b", "c"):
            (ovr / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((28, 28), 40 * i, np.uint8)).save(ovr / split / cls / f"{i}.png")
    b = BENCHMARKS.build({"name": "ad_folder", "root": str(ovr), "normal_class": 1, "preprocessor": PRE})
    assert b.layout == "one_vs_rest" and b.normal == "b" and not b.has_masks
    _, paths, is_anom = collect_test_set(b, None)
    assert {p.split("/")[1] for p, a in zip(paths, is_anom) if a} == {"a", "c"}
    assert {p.split("/")[1] for p, a in zip(paths, is_anom) if not a} == {"b"}
    assert ADSettings.from_config(make_cfg(tmp_path, {"name": "ad_folder", "root": str(ovr), "preprocessor": PRE},
                                           {})).classes == ["a", "b", "c"]
    with pytest.raises(ConfigError, match="no class folder 'zebra'"):
        BENCHMARKS.build({"name": "ad_folder", "root": str(ovr), "normal_class": "zebra"})


def test_folder_bad_input(defects, tmp_path):
    from openood_ext.datasets import BENCHMARKS
    import shutil
    root = tmp_path / "bad"
    shutil.copytree(defects, root)
    gt = root / "test" / "dots" / "anomalous_gt" / "0000.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(gt)
    b = BENCHMARKS.build({"name": "ad_folder", "root": str(root), "normal_class": "dots", "preprocessor": PRE})
    with pytest.raises(DataError, match=r"mask .*0000.png is 20x20 but its image .*0000.png is 28x28"):
        b.load_mask("test/dots/anomalous/0000.png", True)
    b2 = BENCHMARKS.build({"name": "ad_folder", "root": str(root), "normal_class": "dots", "preprocessor": PRE,
                           "resize_masks": True})
    assert b2.load_mask("test/dots/anomalous/0000.png", True).shape == (28, 28)
    shutil.rmtree(root / "test" / "stripes" / "anomalous")
    with pytest.raises(DataError, match="no test anomalies"):
        BENCHMARKS.build({"name": "ad_folder", "root": str(root), "normal_class": "stripes", "preprocessor": PRE})


def test_mvtec_benchmark_on_a_fake_tree(tmp_path):
    from openood_ext.datasets import BENCHMARKS
    root = tmp_path / "mvtec"
    with pytest.raises(DataError, match="mvtec.com"):
        BENCHMARKS.build({"name": "mvtec", "root": str(root), "normal_class": "bottle"})
    with pytest.raises(ConfigError, match="not an MVTec-AD class"):
        BENCHMARKS.build({"name": "mvtec", "root": str(root), "normal_class": "banana"})
    img = lambda v, s=40: Image.fromarray(np.full((s, s, 3), v, np.uint8))  # noqa: E731
    for i in range(3):
        (root / "bottle" / "train" / "good").mkdir(parents=True, exist_ok=True)
        img(100).save(root / "bottle" / "train" / "good" / f"{i:03d}.png")
    (root / "bottle" / "test" / "good").mkdir(parents=True)
    img(100).save(root / "bottle" / "test" / "good" / "000.png")
    for d in ("broken_large", "contamination"):
        (root / "bottle" / "test" / d).mkdir(parents=True)
        (root / "bottle" / "ground_truth" / d).mkdir(parents=True)
        for i in range(2):
            img(200).save(root / "bottle" / "test" / d / f"{i:03d}.png")
            m = np.zeros((40, 40), np.uint8)
            m[5:15, 5:15] = 255
            Image.fromarray(m).save(root / "bottle" / "ground_truth" / d / f"{i:03d}_mask.png")
    b = BENCHMARKS.build({"name": "mvtec", "root": str(root), "normal_class": 0, "oe_defects": 1,
                          "derived_dir": str(tmp_path / "lists")})
    _, paths, is_anom = collect_test_set(b, None)
    assert is_anom.tolist() == [0, 1, 1, 1, 1] and b.defects == ["broken_large", "contamination"]
    assert len(b.dataset(b.oe_split).entries) == 2  # one per defect type
    assert b.load_mask(paths[1], True).sum() == 100 and b.load_mask(paths[0], False).sum() == 0
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "bottle" / "ground_truth" / "contamination" / "001_mask.png")
    with pytest.raises(DataError, match=r"001_mask.png is 20x20 but its image .*001.png is 40x40"):
        b.load_mask("bottle/test/contamination/001.png", True)


def test_normal_class_by_index_or_name_with_one_line_errors():
    from openood_ext.datasets.benchmark import named_class
    classes = ("bottle", "cable", "capsule")
    assert named_class(1, classes, "MVTec-AD") == "cable" and named_class("capsule", classes, "MVTec-AD") == "capsule"
    with pytest.raises(ConfigError, match=r"3 is not an MVTec-AD class index \(0\.\.2\)"):
        named_class(3, classes, "MVTec-AD")
    with pytest.raises(ConfigError, match="'wood' is not an MVTec-AD class .bottle, cable, capsule."):
        named_class("wood", classes, "MVTec-AD")
    with pytest.raises(ConfigError, match="True is not"):  # a bool is not an index
        named_class(True, classes, "MVTec-AD")


# ------------------------------------------------------- the whole protocol checked before anything exists
def _folder_set(root: Path, classes=("a", "b", "c"), empty_train=(), no_normal_test=(), layout="one_vs_rest",
                mask_size=None) -> dict:
    """An ``ad_folder`` tree of 28x28 grey images; returns its benchmark block."""
    rng = np.random.default_rng(0)

    def put(folder: Path, n: int, size=(28, 28)):
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, size[::-1], dtype=np.uint8)).save(folder / f"{i}.png")

    for c in classes:
        if layout == "one_vs_rest":
            put(root / "train" / c, 0 if c in empty_train else 4)
            put(root / "test" / c, 0 if c in no_normal_test else 3)
        else:
            put(root / "train" / c / "normal", 4)
            put(root / "test" / c / "normal", 3)
            put(root / "test" / c / "anomalous", 2)
            put(root / "test" / c / "anomalous_gt", 2, size=mask_size.get(c, (28, 28)))
    return {"name": "ad_folder", "root": str(root), "preprocessor": PRE}


def _refused_before_anything(tmp_path, cfg, error, *fragments):
    with pytest.raises(error) as exc:
        run_config(cfg)
    msg = str(exc.value)
    assert "\n" not in msg and all(f in msg for f in fragments), msg
    assert not (tmp_path / "results").exists()  # no run directory, nothing trained
    return msg


def test_empty_classes_list_is_one_line(labelled, tmp_path):
    with pytest.raises(ConfigError, match=r"ad.classes: empty list; give the normal classes to run, or 'all' "
                                          r"\(classes: 0, 1, 2\)"):
        ADSettings.from_config(make_cfg(tmp_path, bench_spec(labelled), {"classes": []}))


def test_seeds_list_on_the_command_line_is_accepted(labelled, tmp_path):
    """``ad.seeds=[0,3]`` replaces ``seeds: 1`` (documented: N or a list); it used to say "expected int"."""
    from openood_ext.config import apply_overrides
    cfg = apply_overrides(make_cfg(tmp_path, bench_spec(labelled), {"seeds": 1}), ["ad.seeds=[0,3]"])
    assert ADSettings.from_config(cfg).seeds == [0, 3]


@pytest.mark.parametrize("kind", ["empty_train", "no_normal_test"])
def test_a_later_class_without_data_is_refused_before_training(tmp_path, kind):
    spec = _folder_set(tmp_path / "set", **{kind: ("c",)})
    cfg = make_cfg(tmp_path, spec, {"classes": "all"})
    what = "no training images" if kind == "empty_train" else "no normal test images"
    _refused_before_anything(tmp_path, cfg, DataError, "class c", what)


def test_masks_of_another_size_than_their_images_are_refused_before_training(tmp_path):
    spec = _folder_set(tmp_path / "set", classes=("a", "b"), layout="normal_anomalous", mask_size={"b": (20, 28)})
    cfg = make_cfg(tmp_path, spec, {"classes": "all"})
    _refused_before_anything(tmp_path, cfg, DataError, "ground-truth mask", "test/b/anomalous_gt/0.png",
                             "is 20x28 but its image", "is 28x28")


def test_test_limit_too_small_for_a_split_is_refused_before_training(labelled, tmp_path):
    cfg = make_cfg(tmp_path, bench_spec(labelled), {"classes": [0, 1], "test_limit": 1})
    _refused_before_anything(tmp_path, cfg, DataError, "ad.test_limit=1 leaves split", "raise the limit")


def test_weights_a_trainer_reads_are_checked_before_anything(labelled, tmp_path, monkeypatch):
    """A trainer's ``check_weights(net)`` runs in the precheck: a truncated checkpoint (or one of another
    architecture) is refused before the run directory exists, not after the first cell."""
    from openood_ext.errors import CheckpointError
    from openood_ext.networks import NETWORKS
    from openood_ext.networks.checkpoint import load_checkpoint, save_checkpoint
    from openood_ext.trainers import TRAINERS
    good = tmp_path / "good.pt"
    save_checkpoint(good, NETWORKS.build({"name": "fcdd_cnn28", "in_channels": 1, "image_size": 28}), {"name": "fcdd_cnn28"})
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:200])
    other = tmp_path / "other.pt"
    save_checkpoint(other, NETWORKS.build({"name": "lenet", "num_classes": 3}), {"name": "lenet"})
    fcdd = TRAINERS.get("fcdd")
    for path, fragment in ((tmp_path / "cut.pt", "not a readable checkpoint"), (other, "does not fit network")):
        monkeypatch.setattr(fcdd, "check_weights", lambda self, net, path=path: load_checkpoint(path, net), raising=False)
        _refused_before_anything(tmp_path, make_cfg(tmp_path, bench_spec(labelled), {"classes": [0]}),
                                 CheckpointError, str(path), fragment)


def test_vmdls_and_oaml_check_the_weights_they_read(tmp_path):
    from openood_ext.errors import CheckpointError
    from openood_ext.trainers.oaml import OAMLTrainer
    from openood_ext.trainers.vmdls import VMDLSTrainer
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 truncated")
    vm = VMDLSTrainer.__new__(VMDLSTrainer)
    vm.init_weights = str(tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match=r"trainer.init_weights: .*cut.pt: not a readable checkpoint"):
        vm.check_weights(object())
    oaml = OAMLTrainer.__new__(OAMLTrainer)
    oaml.student_init = str(tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match=r"cut.pt: not a readable checkpoint"):
        oaml.check_weights(torch.nn.Linear(2, 2))
