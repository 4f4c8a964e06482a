"""The run report: plots exist, the HTML parses and references only files that exist."""

from __future__ import annotations

from html.parser import HTMLParser

from openood_ext.reports import ad_class_roc_plot, heatmap_grid

import numpy as np
import pytest


class Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.tables, self.errors = [], 0, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.srcs.append(attrs["src"])
        if tag == "table":
            self.tables += 1


def test_main_job_writes_report_with_existing_plots(digits_run):
    work, _ = digits_run
    run = work / "results/digits_digits_cnn_test_ood_s0"
    parser = Collector()
    parser.feed((run / "report.html").read_text())
    assert parser.tables == 1
    assert len(parser.srcs) == 8  # ROC + histogram for each of 4 postprocessors
    for src in parser.srcs:
        assert not src.startswith(("http", "/")) and (run / src).is_file(), src
        assert (run / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ad_and_heatmap_helpers(tmp_path):
    rng = np.random.default_rng(0)
    per_class = {c: (rng.normal(size=50) + np.r_[np.zeros(25), np.ones(25)], np.r_[np.zeros(25), np.ones(25)])
                 for c in range(3)}
    assert ad_class_roc_plot(per_class, tmp_path / "ad.png").stat().st_size > 1000
    out = heatmap_grid(rng.random((5, 3, 8, 8)), rng.random((5, 8, 8)), tmp_path / "grid.png", ncols=3)
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="heatmap_grid"):
        heatmap_grid(rng.random((5, 8, 8)), rng.random((5, 8, 8)), tmp_path / "bad.png")
