"""``openood-ext leaderboard``: aggregate run directories into one table, OpenOOD's columns.

    openood-ext leaderboard RESULTS_DIR [-o leaderboard.csv] [--format csv|md|html] [--reference ref.csv]

One row per (benchmark, training method, postprocessor, network, outlier data). Values are percentages
with two decimals, ``mean ± std`` over the runs (seeds) of that row, std being the population standard
deviation (ddof=0); a row made of a single run shows the mean alone, and ``Seeds`` says how many runs
were averaged. Rows are sorted by Near-OOD AUROC, best first. A group mean computed over fewer OOD sets
than the benchmark defines is flagged in ``Additional_Description``. Run directories that are not
complete (no run.json with ``status: complete``, missing or unreadable metrics) are skipped with a
warning naming them.

``--reference`` joins published numbers (e.g. configs/reference/openood_v1.5_cifar10.csv, matched on
Training + Postprocessor) and adds ``Ref_*`` and ``Delta_*`` (ours - published, in points) columns.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .errors import DataError, OpenOODError
from .utils.io import write_text

COLUMNS = ["Benchmark", "Training", "Postprocessor", "Near-OOD_AUROC", "Far-OOD_AUROC", "ID_Accuracy",
           "Outlier_Data", "Arch", "Additional_Description", "Near-OOD_FPR95", "Far-OOD_FPR95", "Seeds"]
METRIC_COLUMNS = {  # column -> (dataset row in metrics.csv, metric)
    "Near-OOD_AUROC": ("nearood", "auroc"), "Far-OOD_AUROC": ("farood", "auroc"),
    "ID_Accuracy": ("id_test", "accuracy"), "Near-OOD_FPR95": ("nearood", "fpr95"),
    "Far-OOD_FPR95": ("farood", "fpr95"),
}
REF_COLUMNS = ["Near-OOD_AUROC", "Far-OOD_AUROC", "ID_Accuracy"]


def warn(message: str) -> None:
    print(f"openood-ext leaderboard: warning: {message}", file=sys.stderr)


def find_runs(results_dir: Path) -> list[Path]:
    """Directories under ``results_dir`` holding a run.json (``.partial`` work directories excluded)."""
    if not results_dir.is_dir():
        raise DataError(f"{results_dir}: results directory not found")
    return sorted(p.parent for p in results_dir.rglob("run.json")
                  if not p.parent.name.endswith(".partial") and ".old-" not in p.parent.name)


def describe_run(run_dir: Path) -> dict | None:
    """The identity of a complete test run and its metrics, or None (with a warning) if unusable."""
    try:
        record = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError) as exc:
        warn(f"skipping {run_dir}: run.json unreadable ({exc})")
        return None
    if record.get("status") != "complete":
        warn(f"skipping {run_dir}: status is {record.get('status')!r}, not 'complete'")
        return None
    if not (run_dir / "metrics.csv").is_file():
        return None  # a training run: nothing to rank
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        metrics = pd.read_csv(run_dir / "metrics.csv")
        missing = {"postprocessor", "dataset", "metric", "value"} - set(metrics.columns)
        if missing:
            raise ValueError(f"columns {sorted(missing)} missing")
    except (OSError, ValueError, yaml.YAMLError, pd.errors.ParserError) as exc:
        warn(f"skipping {run_dir}: config.yaml or metrics.csv unreadable ({str(exc).splitlines()[0]})")
        return None
    trainer_cfg, synth_cfg = _as_mapping(cfg.get("trainer")), _as_mapping(cfg.get("synthesizer"))
    trainer = trainer_cfg.get("name")
    outlier = synth_cfg.get("name") or trainer_cfg.get("outlier_data")
    network = cfg.get("network") or {}
    arch = network.get("name", "?")
    if network.get("width") is not None:
        arch = f"{arch} (width {network['width']})"
    return {"dir": run_dir, "seed": record.get("seed"), "metrics": metrics,
            "Benchmark": (cfg.get("benchmark") or {}).get("title") or (cfg.get("benchmark") or {}).get("name", "?"),
            "Training": trainer or "pretrained", "Arch": arch, "Outlier_Data": outlier or "none",
            "Epochs": (record.get("checkpoint_meta") or {}).get("epochs")}


def _as_mapping(node) -> dict:
    """A config section given as ``{name: ...}`` or as a bare name, as a dict."""
    if isinstance(node, dict):
        return node
    return {"name": node} if node else {}


def format_mean_std(values: list[float]) -> str:
    values = [100 * v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}"


def parse_mean(cell) -> float:
    """The mean part of a ``"mean ± std"`` cell as float (NaN when empty)."""
    if cell is None or (isinstance(cell, float) and np.isnan(cell)) or str(cell).strip() == "":
        return float("nan")
    return float(str(cell).split("±")[0])


def build_leaderboard(results_dir: str | Path, reference: str | Path | None = None) -> pd.DataFrame:
    """The leaderboard as a DataFrame (string cells), sorted by Near-OOD AUROC."""
    groups: dict[tuple, dict] = {}
    for run_dir in find_runs(Path(results_dir)):
        run = describe_run(run_dir)
        if run is None:
            continue
        m = run["metrics"]
        for pp, rows in m.groupby("postprocessor", sort=False):
            key = (run["Benchmark"], run["Training"], pp, run["Arch"], run["Outlier_Data"])
            g = groups.setdefault(key, {"values": {c: [] for c in METRIC_COLUMNS}, "seeds": [], "partial": False,
                                        "epochs": set()})
            for col, (dataset, metric) in METRIC_COLUMNS.items():
                hit = rows[(rows.dataset == dataset) & (rows.metric == metric)]
                g["values"][col].append(float(hit.value.iloc[0]) if len(hit) else None)
                if len(hit) and "partial" in rows.columns and bool(hit.partial.iloc[0]):
                    g["partial"] = True
            g["seeds"].append(run["seed"])
            if run["Epochs"] is not None:
                g["epochs"].add(run["Epochs"])
    records = []
    for (bench, training, pp, arch, outlier), g in groups.items():
        notes = []
        if g["epochs"]:
            notes.append("/".join(f"{e} epochs" for e in sorted(g["epochs"])))
        if g["partial"]:
            notes.append("partial: some OOD sets absent")
        if len(set(g["seeds"])) < len(g["seeds"]):
            notes.append("repeated seeds")
        records.append({"Benchmark": bench, "Training": training, "Postprocessor": pp,
                        **{c: format_mean_std(v) for c, v in g["values"].items()},
                        "Outlier_Data": outlier, "Arch": arch, "Additional_Description": "; ".join(notes),
                        "Seeds": len(g["seeds"])})
    table = pd.DataFrame(records, columns=COLUMNS)
    if not table.empty:
        order = table["Near-OOD_AUROC"].map(parse_mean).fillna(-1).sort_values(ascending=False, kind="stable").index
        table = table.loc[order].reset_index(drop=True)
    if reference is not None:
        table = add_reference(table, Path(reference))
    return table


def add_reference(table: pd.DataFrame, reference: Path) -> pd.DataFrame:
    if not reference.is_file():
        raise DataError(f"{reference}: reference file not found")
    try:
        ref = pd.read_csv(reference, comment="#", dtype=str)
    except (pd.errors.ParserError, ValueError) as exc:
        raise DataError(f"{reference}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    need = {"Training", "Postprocessor", *REF_COLUMNS}
    if need - set(ref.columns):
        raise DataError(f"{reference}: missing column(s) {sorted(need - set(ref.columns))}")
    ref = ref.set_index(["Training", "Postprocessor"])
    out = table.copy()
    for col in REF_COLUMNS:
        refs, deltas = [], []
        for _, row in out.iterrows():
            key = (row["Training"], row["Postprocessor"])
            cell = ref.loc[key, col] if key in ref.index else ""
            refs.append(cell)
            delta = parse_mean(row[col]) - parse_mean(cell)
            deltas.append("" if np.isnan(delta) else f"{delta:+.2f}")
        out[f"Ref_{col}"] = refs
        out[f"Delta_{col}"] = deltas
    return out


def render(table: pd.DataFrame, fmt: str) -> str:
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "md":
        header = "| " + " | ".join(table.columns) + " |"
        sep = "|" + "|".join("---" for _ in table.columns) + "|"
        body = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
        return "\n".join([header, sep, *body]) + "\n"
    if fmt == "html":
        buf = io.StringIO()
        table.to_html(buf, index=False, escape=True, border=0)
        return ("<!doctype html><html><head><meta charset='utf-8'><title>openood_ext leaderboard</title>"
                "<style>table{border-collapse:collapse;font:13px sans-serif}td,th{padding:3px 8px;"
                "border-bottom:1px solid #ddd;text-align:right}</style></head><body>"
                f"<h1>Leaderboard</h1>{buf.getvalue()}</body></html>\n")
    raise OpenOODError(f"--format: expected csv, md or html, got {fmt!r}")


def main(argv) -> int:
    parser = argparse.ArgumentParser(prog="openood-ext leaderboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir")
    parser.add_argument("-o", "--output", help="file to write (default: print)")
    parser.add_argument("--format", default=None, choices=["csv", "md", "html"],
                        help="default: from the output's suffix, else csv")
    parser.add_argument("--reference", help="CSV of published numbers to compare with")
    args = parser.parse_args([a for a in argv if a != "--debug"])
    fmt = args.format or {".md": "md", ".html": "html"}.get(Path(args.output or "").suffix, "csv")
    table = build_leaderboard(args.results_dir, args.reference)
    text = render(table, fmt)
    if args.output:
        write_text(args.output, text)
        print(f"leaderboard: {len(table)} rows written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
