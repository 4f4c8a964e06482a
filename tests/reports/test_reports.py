"""The run report: plots exist, the HTML parses and references only files that exist."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest

from conftest import MAIN_CONFIG, cli
from openood_ext.errors import DataError
from openood_ext.reports import ad_class_roc_plot, heatmap_grid, roc_points, write_report

PNG = b"\x89PNG\r\n\x1a\n"


class Collector(HTMLParser):
    """Every <img src>, <a href> and <link href>, the number of tables, and unbalanced tags."""

    VOID = {"img", "meta", "br", "link", "hr", "input"}

    def __init__(self):
        super().__init__()
        self.refs, self.tables, self.stack, self.unbalanced = [], 0, [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.refs.append(attrs["src"])
        if tag in ("a", "link") and attrs.get("href"):
            self.refs.append(attrs["href"])
        if tag == "table":
            self.tables += 1
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.unbalanced.append(tag)


def parse_report(run: Path) -> Collector:
    parser = Collector()
    parser.feed((run / "report.html").read_text())
    parser.close()
    assert not parser.unbalanced and not parser.stack
    for ref in parser.refs:  # offline: only relative references to files of the run directory
        assert not ref.startswith(("http:", "https:", "/", "file:")), ref
        target = run / unquote(ref)
        assert target.is_file() and target.resolve().is_relative_to(run.resolve()), ref
    return parser


def fake_run(root: Path, pps=("msp", "knn k=5 #2")) -> Path:
    """A test_ood run directory with metrics.csv, config.yaml and scores/<pp>.npz (names needing URL quoting)."""
    rng = np.random.default_rng(0)
    run = root / "run"
    (run / "scores").mkdir(parents=True)
    (run / "config.yaml").write_text("benchmark: {name: digits}\nnetwork: {name: digits_cnn}\nseed: 3\n")
    rows = []
    for i, pp in enumerate(pps):
        arrays = {"id_test__conf": rng.normal(1 + i, 1, 300)}
        for name in ("near_set", "far_set"):
            arrays[f"{name}__conf"] = rng.normal(0, 1, 200)
        np.savez(run / "scores" / f"{pp}.npz", **arrays)
        rows += [(pp, "id_test", "id", "accuracy", 0.9, False), (pp, "near_set", "near", "auroc", 0.8, False),
                 (pp, "far_set", "far", "auroc", 0.85, False), (pp, "nearood", "near", "auroc", 0.8, False),
                 (pp, "farood", "far", "auroc", 0.85, True), (pp, "nearood", "near", "fpr95", 0.4, False)]
    pd.DataFrame(rows, columns=["postprocessor", "dataset", "group", "metric", "value", "partial"]).to_csv(
        run / "metrics.csv", index=False)
    return run


def test_report_of_a_constructed_run(tmp_path):
    run = fake_run(tmp_path)
    out = write_report(run)
    assert out == run / "report.html"
    parser = parse_report(run)
    assert parser.tables == 3  # summary, AUROC per set, all metrics
    plots = [r for r in parser.refs if r.startswith("plots/")]
    assert len(plots) == 4  # ROC + histogram for each of the 2 postprocessors
    assert sorted(set(parser.refs) - set(plots)) == ["config.yaml", "metrics.csv"]  # links to the files present
    for ref in plots:
        assert (run / unquote(ref)).read_bytes()[:8] == PNG
    page = out.read_text()
    assert "knn k=5 #2" in page and "85.00*" in page and "digits_cnn" in page  # partial far mean flagged
    assert not list(run.rglob(".*.tmp"))  # atomic writes leave no temporary files


def test_report_needs_metrics(tmp_path):
    with pytest.raises(DataError, match="metrics.csv"):
        write_report(tmp_path)


@pytest.fixture(scope="module")
def quick_main_job(tmp_path_factory):
    """The main job's config as shipped, with one training epoch so that this file stays fast."""
    work = tmp_path_factory.mktemp("report_main_job")
    proc = cli("--config", str(MAIN_CONFIG), "trainer.epochs=1", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work / "results/digits_digits_cnn_test_ood_s0"


def test_main_job_writes_report_with_existing_plots(quick_main_job):
    run = quick_main_job
    parser = parse_report(run)
    assert parser.tables == 4  # summary, AUROC per set, all metrics, postprocessors' hyperparameters
    pps = sorted(p.stem for p in (run / "scores").glob("*.npz"))
    assert pps == ["ebo", "hsc", "knn", "msp"]
    # in the config's order of postprocessors
    links = ["config.yaml", "metrics.csv", "metrics.json", "run.json", "log.txt"]
    plots = [f"plots/{kind}_{pp}.png" for pp in ("msp", "ebo", "knn", "hsc") for kind in ("roc", "hist")]
    training = ["plots/loss_curves.png", "history.json"]  # the network was trained in this run
    assert parser.refs == links + plots + training
    page = (run / "report.html").read_text()
    assert "k=10" in page and "center=fit" in page and "git commit" in page and "id_test 325" in page
    assert "fewer OOD sets" not in page  # no partial mean, no footnote
    assert "<h1>digits_digits_cnn_test_ood_s0</h1>" in (run / "report.html").read_text()
    for ref in plots + training[:1]:  # every image exists and is a PNG
        assert (run / ref).read_bytes()[:8] == PNG
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "complete" and "report" in record["timings_s"]


def test_roc_points_area_is_sklearn_auroc():
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(1)
    pos, neg = np.round(rng.normal(1, 1, 80), 1), np.round(rng.normal(0, 1, 120), 1)
    fpr, tpr = roc_points(pos, neg)
    labels = np.r_[np.ones(80), np.zeros(120)]
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(labels, np.r_[pos, neg]))
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1


def test_ad_and_heatmap_helpers(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(25), np.ones(25)]
    per_class = {c: (rng.normal(size=50) + labels, labels) for c in range(3)}
    out = ad_class_roc_plot(per_class, tmp_path / "ad.png")
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 1000
    with pytest.raises(ValueError, match="class 0"):
        ad_class_roc_plot({0: (np.zeros(3), np.zeros(4))}, tmp_path / "bad_ad.png")
    for channels in (1, 3):
        out = heatmap_grid(rng.random((5, channels, 8, 8)), rng.random((5, 8, 8)), tmp_path / f"grid{channels}.png",
                           ncols=3, titles=[f"#{i}" for i in range(5)])
        assert out.read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="heatmap_grid"):
        heatmap_grid(rng.random((5, 8, 8)), rng.random((5, 8, 8)), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="heatmap_grid"):
        heatmap_grid(rng.random((5, 3, 8, 8)), rng.random((4, 8, 8)), tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists() and not (tmp_path / "bad_ad.png").exists()
