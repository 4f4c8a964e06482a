"""EOE on the AD pipelines: the OE-limit sweep (one row per N, subsets drawn anew per class x
seed and recorded), EOE trainers on both custom-folder layouts, unlabeled-folder scoring, bad input
(one line, exit 2, no run directory). Tiny 32x32 folders, eoe_cnn32 for one epoch."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from eoe_helpers import PRE, cli, data, run, write_cfg  # noqa: F401  (data: fixture)

def test_oe_limit_sweep_one_row_per_n_subsets_per_class_and_seed(capsys, data, tmp_path):
    cfg = write_cfg(tmp_path, data, pipeline="ad_sweep", ad_sweep={"oe_limits": [2, "all"]},
                    **{"ad.classes": ["c0", "c1"], "ad.seeds": 2})
    code, err = run(capsys, cfg)
    assert code == 0, err
    run_dir = tmp_path / "results" / "eoe"
    with open(run_dir / "sweep.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["value"] for r in rows] == ["2", "all"]
    assert all(r["n_classes"] == "2" and r["n_seeds"] == "2" for r in rows)
    assert (run_dir / "plots" / "sweep_auroc.png").stat().st_size > 1000
    for r in rows:  # the sweep row is the value's own ad aggregate
        metrics = json.loads((run_dir / f"oe_limit_{r['value']}" / "metrics.json").read_text())
        assert float(r["auroc_mean"]) == pytest.approx(metrics["auroc_mean"])
    subsets = {}
    for value, n in (("2", 2),):
        for c in ("c0", "c1"):
            for s in (0, 1):
                oe = json.loads((run_dir / f"oe_limit_{value}" / f"normal_{c}" / f"seed_{s}" / "result.json").read_text())["outliers"]
                assert oe["limit"] == n and len(set(oe["subset"])) == n
                subsets[(value, c, s)] = tuple(oe["subset"])
    # drawn anew for every class x seed: 4 draws of 2 of 10 images are not all equal
    assert len({subsets[("2", c, s)] for c in ("c0", "c1") for s in (0, 1)}) > 1
    with open(run_dir / "sweep_cells.csv") as fh:
        cells = list(csv.DictReader(fh))
    assert len(cells) == 2 * 2 * 2
    all_row = next(c for c in cells if c["value"] == "all")
    assert all_row["oe_limit"] == "" and all_row["oe_subset"] == ""


def test_normal_anomalous_layout_and_unlabeled_folder_scores(capsys, data, tmp_path):
    cfg = write_cfg(tmp_path, data, layout="na", objective="eoe_bce")
    code, err = run(capsys, cfg)
    assert code == 0, err
    cell = tmp_path / "results" / "eoe" / "normal_a" / "seed_0"
    blob = np.load(cell / "scores.npz")
    assert set(blob["is_anomaly"].tolist()) == {0, 1}
    folder = data / "na" / "test" / "a"
    out = tmp_path / "scores.csv"
    code, err = cli(capsys, "ad-score", "--checkpoint", str(cell / "checkpoint.pt"), "--folder", str(folder), "--out", str(out))
    assert code == 0, err
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8  # one row per image
    # the same images scored by the pipeline (paths there are relative to the benchmark root)
    by_path = {Path(p).relative_to("test/a").as_posix(): s for p, s in zip(blob["paths"], blob["scores"])}
    for r in rows:
        assert float(r["score"]) == pytest.approx(by_path[r["path"]], rel=1e-5, abs=1e-6)


def test_dsvdd_on_class_folders_scores_with_its_centre(capsys, data, tmp_path):
    cfg = write_cfg(tmp_path, data, objective="eoe_dsvdd", **{"ad.classes": ["c1"]})
    text = yaml.safe_load(cfg.read_text())
    del text["trainer"]["outliers"]
    cfg.write_text(yaml.safe_dump(text))
    code, err = run(capsys, cfg)
    assert code == 0, err
    cell = tmp_path / "results" / "eoe" / "normal_c1" / "seed_0"
    blob = np.load(cell / "scores.npz")
    out = tmp_path / "s.csv"
    code, err = cli(capsys, "ad-score", "--checkpoint", str(cell / "checkpoint.pt"), "--folder",
                    str(data / "ovr" / "test"), "--out", str(out))
    assert code == 0, err
    with open(out) as fh:
        got = {r["path"]: float(r["score"]) for r in csv.DictReader(fh)}
    want = {Path(p).relative_to("test").as_posix(): s for p, s in zip(blob["paths"], blob["scores"])}
    assert got.keys() == want.keys()
    assert np.allclose([got[k] for k in want], list(want.values()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("extra, message", [
    ({"trainer.outliers.limit": 11}, "trainer.outliers.limit: 11 is larger than the outlier set (10 images"),
    ({"trainer.outliers.limit": 0}, "trainer.outliers.limit: 0 leaves no outlier images"),
    ({"benchmark.preprocessor.ms_mode": {"mode": "lpf", "magnitude": 17}},
     "benchmark.preprocessor.ms_mode.magnitude: 17 is larger than half the 32x32 image (16"),
    ({"pipeline": "ad_sweep", "ad_sweep": {"oe_limits": [2, 11]}},
     "ad_sweep trainer.outliers.limit=11: trainer.outliers.limit: 11 is larger than the outlier set"),
    ({"pipeline": "ad_sweep", "ad_sweep": {"magnitudes": [1, 2]}},
     "ad_sweep: the swept key benchmark.preprocessor.ms_mode.magnitude needs config section"),
])
def test_bad_input_is_one_line_exit_2_before_anything_exists(capsys, data, tmp_path, extra, message):
    cfg = write_cfg(tmp_path, data, **extra)
    code, err = run(capsys, cfg)
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "results").exists()


def test_subset_key_redraws_the_oe_subset_and_keeps_it_reproducible(data, tmp_path):
    """The source-level rule behind the per-class x seed redraw: (seed, subset_key) picks the subset."""
    import torch

    import openood_ext.pipelines  # noqa: F401  (registers ad_folder)
    from openood_ext.datasets import BENCHMARKS
    from openood_ext.synthesizers import SYNTHESIZERS, SourceContext
    bench = BENCHMARKS.build({"name": "ad_folder", "root": str(data / "ovr"), "derived_dir": str(tmp_path / "l"),
                              "preprocessor": {k: v for k, v in PRE.items() if k != "normalize"}})

    def pool(seed, key):
        src = SYNTHESIZERS.build({"name": "oe_images", "folder": str(data / "oe"), "limit": 3})
        src.setup(SourceContext(bench, torch.device("cpu"), seed, 4, 2, 0, key))
        src.check()
        return tuple(src.pool.tolist())

    draws = {(s, k): pool(s, k) for s in range(3) for k in range(3)}
    assert all(len(set(p)) == 3 for p in draws.values())
    assert pool(1, 2) == draws[(1, 2)]                       # reproducible
    assert len(set(draws.values())) >= 6                      # 9 draws of 3 of 10 images: mostly distinct
    assert pool(0, None) == pool(0, None) and SourceContext(bench, None, 0, 1, 1).subset_key is None
