"""``report.html``: a run's metrics table and plots in one file that opens offline.

Plots are PNG files under ``<run>/plots/`` referenced by relative paths, so the run directory can be
copied or zipped as a whole.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from ..utils.io import write_text
from .plots import histogram_plot, roc_plot


def load_scores(npz_path: Path) -> dict[str, np.ndarray]:
    """``split -> confidences`` from a ``scores/<postprocessor>.npz`` file."""
    with np.load(npz_path) as data:
        return {key[: -len("__conf")]: data[key] for key in data.files if key.endswith("__conf")}


def write_report(run_dir: str | Path) -> Path:
    """Write ``plots/roc_<pp>.png``, ``plots/hist_<pp>.png`` and ``report.html``; return the report path."""
    run_dir = Path(run_dir)
    metrics = pd.read_csv(run_dir / "metrics.csv")
    sections = []
    for npz in sorted((run_dir / "scores").glob("*.npz")):
        pp = npz.stem
        confs = load_scores(npz)
        id_conf = confs.pop("id_test")
        if not confs:
            continue
        roc = roc_plot(id_conf, confs, f"{pp}: ROC per OOD set", run_dir / "plots" / f"roc_{pp}.png")
        hist = histogram_plot(id_conf, confs, f"{pp}: confidences", run_dir / "plots" / f"hist_{pp}.png")
        sections.append(
            f"<h2>{html.escape(pp)}</h2><div class='row'>"
            f"<img src='{roc.relative_to(run_dir).as_posix()}' alt='ROC curves of {html.escape(pp)}'>"
            f"<img src='{hist.relative_to(run_dir).as_posix()}' alt='confidence histograms of {html.escape(pp)}'></div>")
    table = (metrics[metrics.metric.isin(["accuracy", "auroc", "aupr_in", "aupr_out", "fpr95"])]
             .pivot_table(index=["postprocessor", "metric"], columns="dataset", values="value", sort=False) * 100).round(2)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>openood_ext report: {html.escape(run_dir.name)}</title>"
        "<style>body{font:14px sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
        "td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}.row img{margin:4px;"
        "max-width:48%}</style></head><body>"
        f"<h1>{html.escape(run_dir.name)}</h1><p>Metrics in percent; OOD is the positive class; "
        "fpr95 = OOD accepted when 95% of ID is kept.</p>"
        f"{table.to_html(na_rep='', border=0)}{''.join(sections)}</body></html>\n")
    out = run_dir / "report.html"
    write_text(out, page)
    return out
