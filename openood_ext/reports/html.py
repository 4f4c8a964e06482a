"""``report.html``: a run's metrics tables and plots as one HTML page that opens offline.

Plots are PNG files under ``<run>/plots/`` referenced by relative paths (no network access, no
JavaScript), so the run directory can be copied or zipped as a whole and the report still shows them.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
import yaml

from ..errors import DataError
from ..utils.io import write_text
from .plots import histogram_plot, roc_plot

SUMMARY = [("id_test", "accuracy", "ID acc"), ("nearood", "auroc", "Near AUROC"), ("nearood", "fpr95", "Near FPR95"),
           ("farood", "auroc", "Far AUROC"), ("farood", "fpr95", "Far FPR95")]
STYLE = ("body{font:14px sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;font-size:12px;"
         "margin-bottom:1em}td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}"
         ".row img{margin:4px;max-width:48%;vertical-align:top}p.note{color:#555}")


def load_scores(npz_path: Path) -> dict[str, np.ndarray]:
    """``split -> confidences`` from a ``scores/<postprocessor>.npz`` file."""
    with np.load(npz_path) as data:
        return {key[: -len("__conf")]: data[key] for key in data.files if key.endswith("__conf")}


def _img(run_dir: Path, path: Path, alt: str) -> str:
    return f"<img src=\"{html.escape(quote(path.relative_to(run_dir).as_posix()))}\" alt=\"{html.escape(alt)}\">"


def _any_partial(metrics: pd.DataFrame) -> bool:
    return "partial" in metrics and metrics.partial.astype(str).str.lower().eq("true").any()


def _tables(metrics: pd.DataFrame) -> str:
    summary = {}
    for pp, rows in metrics.groupby("postprocessor", sort=False):
        line = {}
        for dataset, metric, label in SUMMARY:
            hit = rows[(rows.dataset == dataset) & (rows.metric == metric)]
            line[label] = "" if hit.empty else f"{100 * hit.value.iloc[0]:.2f}" + (
                "*" if "partial" in rows and str(hit.partial.iloc[0]).lower() == "true" else "")
        summary[pp] = line
    summary = pd.DataFrame.from_dict(summary, orient="index")
    summary.index.name = "postprocessor"
    sets = metrics[(metrics.metric == "auroc") & ~metrics.dataset.isin(["nearood", "farood"])]
    per_set = (sets.pivot_table(index="postprocessor", columns="dataset", values="value", sort=False) * 100).round(2)
    detail = (metrics[metrics.metric.isin(["accuracy", "auroc", "aupr_in", "aupr_out", "fpr95", "fpr95_openood"])]
              .pivot_table(index=["postprocessor", "metric"], columns="dataset", values="value", sort=False) * 100
              ).round(2)
    footnote = "<p class='note'>* mean over fewer OOD sets than the benchmark defines.</p>" if _any_partial(metrics) else ""
    return ("<h2>Summary (%)</h2>" + summary.to_html(border=0, na_rep="") + footnote
            + "<h2>AUROC per OOD set (%)</h2>" + per_set.to_html(border=0, na_rep="")
            + "<h2>All metrics (%)</h2>" + detail.to_html(border=0, na_rep=""))


def _postprocessor_table(summary: dict) -> str:
    """Hyperparameters (APS choice included) and sample counts per postprocessor, from metrics.json."""
    rows = []
    for pp, entry in (summary.get("postprocessors") or {}).items():
        if not isinstance(entry, dict):
            continue
        params = ", ".join(f"{k}={v}" for k, v in (entry.get("hyperparameters") or {}).items()) or "none"
        search = entry.get("aps")
        if not isinstance(search, dict):
            aps = "no"
        elif search.get("auroc") is None:
            aps = f"{search.get('chosen')} (the grid's only point, no search)"
        else:
            aps = (f"chosen {search.get('chosen')} of {len(search.get('trials', []))} (val AUROC "
                   f"{100 * search['auroc']:.2f}%)")
        counts = ", ".join(f"{name} {s.get('n')}" for name, s in (entry.get("sets") or {}).items()
                           if isinstance(s, dict) and s.get("n") is not None)
        rows.append({"postprocessor": pp, "hyperparameters": params, "APS": aps, "OOD samples": counts})
    if not rows:
        return ""
    return "<h2>Postprocessors</h2>" + pd.DataFrame(rows).to_html(border=0, index=False)


def write_report(run_dir: str | Path, facts: dict | None = None) -> Path:
    """Write ``plots/roc_<pp>.png``, ``plots/hist_<pp>.png`` for every ``scores/<pp>.npz``, and ``report.html``.

    ``facts``: extra ``label -> value`` lines for the header (checkpoint, date, git commit, ID samples ...).
    Returns the report's path. Raises DataError when the run directory has no readable metrics.csv.
    """
    run_dir = Path(run_dir)
    try:
        metrics = pd.read_csv(run_dir / "metrics.csv")
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{run_dir / 'metrics.csv'}: cannot make a report ({str(exc).splitlines()[0]})") from None
    groups = dict(zip(metrics.dataset, metrics.group)) if "group" in metrics else {}
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        cfg = {}
    cfg = cfg if isinstance(cfg, dict) else {}
    sections = []
    order = {pp: i for i, pp in enumerate(dict.fromkeys(metrics.postprocessor.astype(str)))}
    for npz in sorted((run_dir / "scores").glob("*.npz"), key=lambda p: (order.get(p.stem, len(order)), p.stem)):
        pp = npz.stem
        confs = load_scores(npz)
        id_conf = confs.pop("id_test", None)
        for name in [n for n in confs if groups.get(n) == "csid"]:  # covariate-shifted ID sets (fsood) are not OOD
            confs.pop(name)
        if id_conf is None or not confs:
            sections.append(f"<h2>{html.escape(pp)}</h2><p class='note'>no ID test / OOD scores to plot</p>")
            continue
        roc = roc_plot(id_conf, confs, f"{pp}: ROC per OOD set", run_dir / "plots" / f"roc_{pp}.png", groups)
        hist = histogram_plot(id_conf, confs, f"{pp}: confidences", run_dir / "plots" / f"hist_{pp}.png", groups)
        sections.append(f"<h2>{html.escape(pp)}</h2><div class='row'>"
                        + _img(run_dir, roc, f"ROC curves of {pp}") + _img(run_dir, hist, f"confidence histograms of {pp}")
                        + "</div>")
    curves = run_dir / "plots" / "loss_curves.png"
    if curves.is_file():  # the network was trained in this run: its per-epoch loss terms
        sections.append("<h2>Training</h2><div class='row'>" + _img(run_dir, curves, "loss terms per epoch")
                        + "</div><p class='note'>per-epoch values in <a href='history.json'>history.json</a></p>")
    try:
        summary = json.loads((run_dir / "metrics.json").read_text())
        summary = summary if isinstance(summary, dict) else {}
    except (OSError, ValueError):
        summary = {}
    facts = [("benchmark", (cfg.get("benchmark") or {}).get("name") if isinstance(cfg.get("benchmark"), dict) else None),
             ("network", (cfg.get("network") or {}).get("name") if isinstance(cfg.get("network"), dict) else None),
             ("seed", cfg.get("seed")), ("checkpoint", summary.get("checkpoint")), *(facts or {}).items()]
    facts_html = ", ".join(f"{k}: <b>{html.escape(str(v))}</b>" for k, v in facts if v is not None)
    pending = run_dir.name.endswith(".partial")  # the pipeline writes run.json right after the report
    links = " · ".join(f"<a href='{f}'>{f}</a>" for f in ("config.yaml", "metrics.csv", "metrics.json", "run.json",
                                                             "log.txt")
                       if (run_dir / f).is_file() or (pending and f == "run.json"))
    name = run_dir.name.removesuffix(".partial")  # written just before the run directory takes its final name
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>openood_ext report: {html.escape(name)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(name)}</h1><p>{facts_html}</p><p>{links}</p>"
        "<p class='note'>Metrics in percent; OOD is the positive class; fpr95 = OOD accepted when 95% of ID is kept; "
        "fpr95_openood = OpenOOD v1.5's variant (ID rejected when 95% of OOD is caught).</p>"
        f"{_tables(metrics)}{_postprocessor_table(summary)}{''.join(sections)}</body></html>\n")
    out = run_dir / "report.html"
    write_text(out, page)
    return out
