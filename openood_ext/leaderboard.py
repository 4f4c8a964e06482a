"""``openood-ext leaderboard``: aggregate run directories into one table, OpenOOD's columns.

    openood-ext leaderboard RESULTS_DIR [-o leaderboard.csv] [--format csv|md|html] [--reference ref.csv]

Every test run directory under RESULTS_DIR (config.yaml + metrics.csv + run.json with ``status: complete``)
contributes one entry per postprocessor. Entries are grouped into one row per (benchmark, training,
postprocessor, network, outlier data, training epochs, postprocessor hyperparameters, rest of the config):
runs are averaged as "seeds" only when they differ in nothing but the seed (and where they ran: experiment
name, output and cache directories, device, checkpoint path). Everything else that differs makes another row:

* ``Hyperparameters``: the postprocessor's effective hyperparameters (metrics.json, so an APS choice or a
  clamped ``k`` shows what was used), plus ``key=value`` for every other config key in which the row
  differs from a row that otherwise looks the same (e.g. ``trainer.lr=0.01``).
* ``Runs``: the run directories averaged in the row, relative to the output file; Markdown and HTML
  link each to its ``report.html`` (to the directory when a run has no report).

* ``Training``: the trainer recorded in the checkpoint (run.json ``checkpoint_meta``), else the config's
  ``trainer.name``; ``pretrained`` when neither says (weights loaded from elsewhere). ``Arch``:
  ``network.name`` (plus its ``width`` when set). ``Outlier_Data``: the checkpoint's outlier source
  (e.g. ``oe_images(train_oe.txt)``), else ``synthesizer.name``, ``trainer.outliers.name`` or
  ``trainer.outlier_data``, else ``none``.
  ``Additional_Description``: the checkpoint's training epochs (run.json ``checkpoint_meta``), and notes
  (a near/far mean over fewer OOD sets than the benchmark defines; repeated seeds).
* Values are percentages with two decimals, ``mean ± std`` over the runs (seeds, from run.json) of the row,
  std being the population standard deviation (ddof=0). **A row made of a single run shows the mean alone**
  (no ``± 0.00``, which would claim a spread that was never measured); ``Seeds`` says how many runs were
  averaged. ``*_FPR95`` is the ODIN/Hendrycks FPR@95 (OOD accepted when 95% of ID is kept; metrics.csv's
  ``fpr95``).
* Runs of one row that share a seed (reruns, or experiments that differ only in name) count as one seed:
  their values are averaged into that seed's value, ``Seeds`` counts distinct seeds, and the row's notes
  and a warning name the repeated seeds.
* ``ad`` runs (metrics.csv with one row per normal class) are rows too: ``Postprocessor`` ``ad:<protocol>``,
  the mean AUROC over classes in an ``AD_AUROC`` column (present only then), ``Seeds`` the runs' ``ad.seeds``.
* Rows are sorted by Near-OOD AUROC, best first (then Far-OOD AUROC, then AD AUROC); rows without a
  near-OOD value last.

Directories that look like runs but are not complete (no or unreadable run.json, status other than
``complete``, ``<experiment>.partial`` work directories, unreadable config.yaml / metrics.csv / metrics.json,
a metrics.csv with a header and no rows, non-numeric metric values) are skipped with a warning naming them,
never regrouped or silently dropped; so are ``ad_sweep`` and ``oe_search`` runs, which have their own
reports. Complete runs without metrics.csv (training runs) are skipped silently.

``--reference`` joins published numbers (e.g. configs/reference/openood_v1.5_cifar10.csv) matched on
Training + Postprocessor, and on Benchmark when the reference file has that column (so a digits run is
never compared with CIFAR-10 numbers), and adds ``Ref_*`` and ``Delta_*`` (ours - published, in percentage
points, from the means) columns for near/far AUROC and ID accuracy.
"""

from __future__ import annotations

import argparse
import html
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .errors import DataError, OpenOODError
from .utils.io import write_text

COLUMNS = ["Benchmark", "Training", "Postprocessor", "Hyperparameters", "Near-OOD_AUROC", "Far-OOD_AUROC",
           "ID_Accuracy", "Outlier_Data", "Arch", "Additional_Description", "Near-OOD_FPR95", "Far-OOD_FPR95",
           "Seeds", "Runs"]
#: Config keys that do not make runs different (where they ran, which seed, which checkpoint file).
NOT_COMPARED = ("seed", "experiment", "output_dir", "cache_dir", "verbose", "resume", "report", "num_workers",
                "overwrite", "device", "train_if_missing", "postprocessors", "aps", "network.checkpoint")
AD_COLUMN = "AD_AUROC"
METRIC_COLUMNS = {  # column -> (dataset row in metrics.csv, metric)
    "Near-OOD_AUROC": ("nearood", "auroc"), "Far-OOD_AUROC": ("farood", "auroc"),
    "ID_Accuracy": ("id_test", "accuracy"), "Near-OOD_FPR95": ("nearood", "fpr95"),
    "Far-OOD_FPR95": ("farood", "fpr95"), AD_COLUMN: ("ad", "auroc"),
}
#: An ``ad`` run's metrics.csv (one row per normal class); its mean AUROC goes to the ``AD_AUROC`` column,
#: present only when some row has it.
AD_COLUMNS = {"class", "auroc_mean"}
#: Pipelines whose metrics.csv is neither a test run's nor an ``ad`` run's: skipped with a note saying so.
NOT_RANKED = ("ad_sweep", "oe_search")
REF_COLUMNS = ["Near-OOD_AUROC", "Far-OOD_AUROC", "ID_Accuracy"]
RUN_FILES = ("run.json", "config.yaml", "metrics.csv")
FORMATS = {".csv": "csv", ".md": "md", ".html": "html", ".htm": "html"}  # output suffix -> format
RUN_SEPARATOR = "; "


def warn(message: str) -> None:
    print(f"openood-ext leaderboard: warning: {message}", file=sys.stderr)


def find_runs(results_dir: Path) -> list[Path]:
    """Directories under ``results_dir`` (itself included) holding run.json, config.yaml or metrics.csv.

    Leftovers of an atomic directory swap (``.<name>.old-<pid>``) are not runs.
    """
    if not results_dir.is_dir():
        raise DataError(f"{results_dir}: results directory not found")
    dirs = {p.parent for name in RUN_FILES for p in results_dir.rglob(name)}
    return sorted(d for d in dirs if ".old-" not in d.name and not _inside_run(d, results_dir))


def _inside_run(d: Path, root: Path) -> bool:
    """True for directories nested in another run directory below ``root`` (e.g. files a plugin wrote)."""
    if d == root:
        return False
    for parent in d.parents:
        if (parent / "run.json").is_file():
            return True
        if parent == root:
            return False
    return False


def describe_run(run_dir: Path) -> dict | None:
    """The identity of a complete test run and its metrics, or None (with a warning) if unusable."""
    if run_dir.name.endswith(".partial"):
        status = _status(run_dir)
        warn(f"skipping {run_dir}: incomplete run ({status or 'no run.json: running or killed'})")
        return None
    if not (run_dir / "run.json").is_file():
        warn(f"skipping {run_dir}: no run.json, so the run never completed")
        return None
    try:
        record = json.loads((run_dir / "run.json").read_text())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        warn(f"skipping {run_dir}: run.json unreadable ({exc})")
        return None
    if record.get("status") != "complete":
        warn(f"skipping {run_dir}: status is {record.get('status')!r}, not 'complete'")
        return None
    if not (run_dir / "metrics.csv").is_file():
        return None  # a training (or bench) run: nothing to rank
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        if not isinstance(cfg, dict):
            raise ValueError("config.yaml is not a mapping")
        summary = read_metrics_json(run_dir)
        metrics = pd.read_csv(run_dir / "metrics.csv")
        if metrics.empty:
            raise CorruptRun("metrics.csv has a header but no rows (truncated or never filled)")
        if AD_COLUMNS <= set(metrics.columns):
            metrics, ad_seeds = ad_metrics(metrics, cfg, summary)
        else:
            ad_seeds = None
            if cfg.get("pipeline") in NOT_RANKED:
                warn(f"skipping {run_dir}: a {cfg['pipeline']} run (compare its values with its own report)")
                return None
        missing = {"postprocessor", "dataset", "metric", "value"} - set(metrics.columns)
        if missing:
            raise ValueError(f"metrics.csv lacks column(s) {sorted(missing)}")
        metrics["value"] = pd.to_numeric(metrics["value"], errors="raise")
        if not np.isfinite(metrics["value"].to_numpy(dtype=float)).all():
            raise ValueError("metrics.csv holds NaN or infinite values")
        metrics["postprocessor"] = metrics["postprocessor"].astype(str)
    except CorruptRun as exc:
        warn(f"skipping {run_dir}: {exc}")
        return None
    except (OSError, ValueError, TypeError, yaml.YAMLError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as exc:
        warn(f"skipping {run_dir}: config.yaml or metrics.csv unreadable ({str(exc).splitlines()[0]})")
        return None
    trainer_cfg, synth_cfg = _as_mapping(cfg.get("trainer")), _as_mapping(cfg.get("synthesizer"))
    meta = record.get("checkpoint_meta") if isinstance(record.get("checkpoint_meta"), dict) else {}
    # what the network was trained with, as recorded in its checkpoint, wins over the test config
    outlier = (meta.get("outliers") or synth_cfg.get("name") or _as_mapping(trainer_cfg.get("outliers")).get("name")
               or _as_mapping(trainer_cfg.get("outlier_data")).get("name"))
    network = _as_mapping(cfg.get("network"))
    arch = str(network.get("name", "?"))
    if network.get("width") is not None:
        arch = f"{arch} (width {network['width']})"
    bench = _as_mapping(cfg.get("benchmark"))
    seed = record.get("seed", cfg.get("seed")) if ad_seeds is None else ad_seeds
    return {"dir": run_dir, "seed": seed, "metrics": metrics,
            "Benchmark": str(bench.get("name", "?")), "Training": str(meta.get("trainer") or trainer_cfg.get("name") or "pretrained"),
            "Arch": arch, "Outlier_Data": str(outlier or "none"), "Epochs": meta.get("epochs"),
            "config": compared_config(cfg), "hyperparameters": postprocessor_hyperparameters(run_dir, cfg)}


def compared_config(cfg: dict) -> dict[str, str]:
    """The run's config flattened to ``dotted.key -> JSON value``, without :data:`NOT_COMPARED` keys."""
    flat: dict[str, str] = {}

    def walk(node, prefix):
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            key = prefix.rstrip(".")
            if not any(key == n or key.startswith(n + ".") for n in NOT_COMPARED):
                flat[key] = json.dumps(node, sort_keys=True, default=str)

    walk(cfg, "")
    return flat


class CorruptRun(ValueError):
    """A run file that exists but cannot be read: the run is reported, never quietly regrouped."""


def read_metrics_json(run_dir: Path) -> dict:
    """``metrics.json`` of a run ({} when absent); CorruptRun when it exists but is not a JSON object
    (e.g. truncated: its effective hyperparameters would otherwise silently fall back to the config's)."""
    path = run_dir / "metrics.json"
    if not path.exists():
        return {}
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CorruptRun(f"metrics.json unreadable ({str(exc).splitlines()[0]}; truncated?)") from None
    if not isinstance(summary, dict):
        raise CorruptRun("metrics.json unreadable (not a JSON object)")
    return summary


def ad_metrics(metrics: pd.DataFrame, cfg: dict, summary: dict) -> tuple[pd.DataFrame, str]:
    """An ``ad`` run's ``metrics.csv`` (one row per class and ``mean``) as one leaderboard entry: the
    mean AUROC over classes under the postprocessor label ``ad:<protocol>``; and the run's seeds (its
    identity for repeated-seed checks)."""
    mean = metrics[metrics["class"].astype(str) == "mean"]
    if len(mean) != 1:
        raise CorruptRun("metrics.csv of an AD run has no 'mean' row (truncated?)")
    ad = _as_mapping(cfg.get("ad")) if isinstance(cfg.get("ad"), dict) else {}
    protocol = summary.get("protocol") or ad.get("protocol") or "one_vs_rest"
    seeds = summary.get("seeds", ad.get("seeds"))
    rows = pd.DataFrame([{"postprocessor": f"ad:{protocol}", "dataset": "ad", "metric": "auroc",
                          "value": mean["auroc_mean"].iloc[0]}])
    return rows, json.dumps(seeds)


def postprocessor_hyperparameters(run_dir: Path, cfg: dict) -> dict[str, dict]:
    """Label -> hyperparameters used: metrics.json's (effective values), else the config's spec."""
    summary = read_metrics_json(run_dir).get("postprocessors", {})
    out = {}
    for label, entry in (summary.items() if isinstance(summary, dict) else ()):
        if isinstance(entry, dict) and isinstance(entry.get("hyperparameters"), dict):
            out[str(label)] = entry["hyperparameters"]
    specs = cfg.get("postprocessors") or []
    for spec in [specs] if isinstance(specs, str) else specs:
        if isinstance(spec, dict) and spec.get("name"):
            label = str(spec.get("label") or spec["name"])
            out.setdefault(label, {k: v for k, v in spec.items()
                                   if k not in ("name", "label", "APS", "aps", "aps_grid")})
    return out


def format_hyperparameters(params: dict) -> str:
    """``k=10, backend=auto`` (keys sorted); empty for none."""
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items()))


def _status(run_dir: Path) -> str | None:
    try:
        return f"status {json.loads((run_dir / 'run.json').read_text()).get('status')!r}"
    except (OSError, ValueError, AttributeError):
        return None


def _as_mapping(node) -> dict:
    """A config section given as ``{name: ...}`` or as a bare name, as a dict."""
    if isinstance(node, dict):
        return node
    return {"name": node} if node else {}


def format_mean_std(values: list) -> str:
    """``"mean ± std"`` in percent (two decimals) of fractions; the mean alone for one value; "" for none."""
    values = [100 * v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}"


def parse_mean(cell) -> float:
    """The mean part of a ``"mean ± std"`` cell as float (NaN when empty or not a number)."""
    if cell is None or (isinstance(cell, float) and np.isnan(cell)):
        return float("nan")
    text = str(cell).split("±")[0].strip()
    try:
        return float(text) if text else float("nan")
    except ValueError:
        return float("nan")


def collect(results_dir: str | Path) -> dict[tuple, dict]:
    """Group key -> metric values over runs (fractions), seeds, run directories and flags."""
    groups: dict[tuple, dict] = {}
    for run_dir in find_runs(Path(results_dir)):
        run = describe_run(run_dir)
        if run is None:
            continue
        config_key = json.dumps(run["config"], sort_keys=True)
        for pp, rows in run["metrics"].groupby("postprocessor", sort=False):
            params = format_hyperparameters(run["hyperparameters"].get(pp, {}))
            key = (run["Benchmark"], run["Training"], pp, run["Arch"], run["Outlier_Data"], run["Epochs"],
                   params, config_key)
            g = groups.setdefault(key, {"values": {c: [] for c in METRIC_COLUMNS}, "seeds": [], "dirs": [],
                                        "partial": False, "config": run["config"], "params": params})
            for col, (dataset, metric) in METRIC_COLUMNS.items():
                hit = rows[(rows.dataset == dataset) & (rows.metric == metric)]
                g["values"][col].append(float(hit.value.iloc[0]) if len(hit) else None)
                if len(hit) and "partial" in rows.columns and str(hit.partial.iloc[0]).lower() == "true":
                    g["partial"] = True
            g["seeds"].append(run["seed"])
            g["dirs"].append(str(run["dir"]))
    return groups


def build_leaderboard(results_dir: str | Path, reference: str | Path | None = None) -> pd.DataFrame:
    """The leaderboard as a DataFrame (string cells, ``Seeds`` an int), sorted by Near-OOD AUROC."""
    records, warned = [], set()
    groups = collect(results_dir)
    differing = _differing_keys(groups)
    for key, g in groups.items():
        bench, training, pp, arch, outlier, epochs = key[:6]
        label = ", ".join(p for p in [g["params"], *(f"{k}={_short(g['config'].get(k))}" for k in differing[key])] if p)
        notes = [f"{epochs} epochs"] if epochs is not None else []
        if g["partial"]:
            notes.append("partial: some OOD sets absent")
        seeds = list(map(str, g["seeds"]))
        distinct = list(dict.fromkeys(seeds))
        if len(distinct) < len(seeds):
            repeated = [f"seed {sd} in {seeds.count(sd)} runs" for sd in distinct if seeds.count(sd) > 1]
            notes.append(f"repeated seeds ({', '.join(repeated)}, counted once)")
            if tuple(g["dirs"]) not in warned:  # once per set of runs, not once per postprocessor
                warned.add(tuple(g["dirs"]))
                warn(f"runs share a seed ({', '.join(repeated)}): each seed counts once, its runs averaged "
                     f"(different experiments or reruns?): {', '.join(g['dirs'])}")
        values = {c: per_seed_means(v, seeds, distinct) for c, v in g["values"].items()}
        records.append({"Benchmark": bench, "Training": training, "Postprocessor": pp, "Hyperparameters": label,
                        **{c: format_mean_std(v) for c, v in values.items()},
                        "Outlier_Data": outlier, "Arch": arch, "Additional_Description": "; ".join(notes),
                        "Seeds": n_seeds(pp, distinct), "Runs": RUN_SEPARATOR.join(g["dirs"])})
    columns = list(COLUMNS)
    if any(r[AD_COLUMN] for r in records):  # ad runs present: their column after the far-OOD AUROC
        columns.insert(columns.index("Far-OOD_AUROC") + 1, AD_COLUMN)
    table = pd.DataFrame(records, columns=columns)
    if not table.empty:
        keys = pd.DataFrame({"near": table["Near-OOD_AUROC"].map(parse_mean).fillna(-np.inf),
                             "far": table["Far-OOD_AUROC"].map(parse_mean).fillna(-np.inf),
                             "ad": [parse_mean(r[AD_COLUMN]) for r in records]}).fillna(-np.inf)
        order = keys.sort_values(["near", "far", "ad"], ascending=False, kind="stable").index
        table = table.loc[order].reset_index(drop=True)
    table["Seeds"] = table["Seeds"].astype(int)
    if reference is not None:
        table = add_reference(table, Path(reference))
    return table


def n_seeds(pp: str, distinct: list[str]) -> int:
    """Distinct seeds of a row: one per run of a test row, the runs' ``ad.seeds`` for an ``ad:`` row."""
    if pp.startswith("ad:"):
        lists = [json.loads(sd) for sd in distinct]
        return sum(len(v) if isinstance(v, list) else 1 for v in lists)
    return len(distinct)


def per_seed_means(values: list, seeds: list[str], distinct: list[str]) -> list:
    """One value per distinct seed (the mean of that seed's runs), so that reruns of one seed never count
    as independent seeds (no "Seeds 2, ± 0.00" from one seed run twice)."""
    out = []
    for sd in distinct:
        got = [v for v, s in zip(values, seeds) if s == sd and v is not None and np.isfinite(v)]
        out.append(float(np.mean(got)) if got else None)
    return out


def _differing_keys(groups: dict[tuple, dict]) -> dict[tuple, list[str]]:
    """Per group: the config keys whose values differ among groups with the same visible columns."""
    siblings: dict[tuple, list[tuple]] = {}
    for key in groups:
        siblings.setdefault(key[:7], []).append(key)  # same benchmark ... epochs and hyperparameters
    out = {}
    for keys in siblings.values():
        configs = [groups[k]["config"] for k in keys]
        all_keys = sorted(set().union(*configs))
        varying = [k for k in all_keys if len({c.get(k) for c in configs}) > 1] if len(keys) > 1 else []
        for k in keys:
            out[k] = varying
    return out


def _short(value: str | None) -> str:
    """A JSON config value for a label: strings unquoted, long values cut."""
    if value is None:
        return "(unset)"
    text = value[1:-1] if value.startswith('"') and value.endswith('"') else value
    return text if len(text) <= 40 else text[:37] + "..."


def load_reference(reference: Path) -> pd.DataFrame:
    """Published numbers (``#`` lines are comments), indexed by (Benchmark,) Training, Postprocessor."""
    if not reference.is_file():
        raise DataError(f"{reference}: reference file not found")
    try:
        ref = pd.read_csv(reference, comment="#", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{reference}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    need = {"Training", "Postprocessor", *REF_COLUMNS}
    if need - set(ref.columns):
        raise DataError(f"{reference}: missing column(s) {sorted(need - set(ref.columns))}")
    keys = ["Benchmark", "Training", "Postprocessor"] if "Benchmark" in ref.columns else ["Training", "Postprocessor"]
    dup = ref[ref.duplicated(keys, keep=False)]
    if not dup.empty:
        raise DataError(f"{reference}: more than one row for {dict(dup.iloc[0][keys])}")
    for col in REF_COLUMNS:
        bad = [v for v in ref[col] if v.strip() and np.isnan(parse_mean(v))]
        if bad:
            raise DataError(f"{reference}: column {col} holds {bad[0]!r}, expected 'mean' or 'mean ± std'")
    return ref.set_index(keys)


def add_reference(table: pd.DataFrame, reference: Path) -> pd.DataFrame:
    """``Ref_<col>`` (published cell) and ``Delta_<col>`` (ours - published, points) for near/far AUROC, ID acc."""
    ref = load_reference(reference)
    keys = list(ref.index.names)
    if "Benchmark" in keys and not table.empty:
        ref_benches = set(ref.index.get_level_values("Benchmark"))
        others = sorted(set(table["Benchmark"]) - ref_benches)
        if others:
            warn(f"{reference} has numbers for benchmark(s) {', '.join(sorted(ref_benches))} only; "
                 f"rows of {', '.join(others)} get no reference")
    out = table.copy()
    for col in REF_COLUMNS:
        refs, deltas = [], []
        for _, row in out.iterrows():
            key = tuple(row[k] for k in keys)
            cell = ref.loc[key, col] if key in ref.index else ""
            refs.append(cell)
            delta = parse_mean(row[col]) - parse_mean(cell)
            deltas.append("" if np.isnan(delta) else f"{delta:+.2f}")
        out[f"Ref_{col}"] = refs
        out[f"Delta_{col}"] = deltas
    return out


def _run_targets(cell: str, base: Path) -> list[tuple[str, str]]:
    """(name relative to ``base``, link target relative to ``base``) for each run of a ``Runs`` cell."""
    out = []
    for run in filter(None, str(cell).split(RUN_SEPARATOR)):
        run_path = Path(run)
        rel = os.path.relpath(run_path, base)
        report = run_path / "report.html"
        target = os.path.relpath(report if report.is_file() else run_path, base)
        out.append((rel, target))
    return out


def render(table: pd.DataFrame, fmt: str, base: str | Path = ".") -> str:
    """The table as CSV, Markdown or a standalone HTML page.

    ``base``: the directory the output file lives in; the ``Runs`` column is made relative to it (CSV:
    run directories; Markdown/HTML: links to each run's report.html).
    """
    base = Path(base).resolve()
    table = table.copy()
    if "Runs" in table.columns:
        runs = [_run_targets(c, base) for c in table["Runs"]]
    if fmt == "csv":
        if "Runs" in table.columns:
            table["Runs"] = [RUN_SEPARATOR.join(name for name, _ in r) for r in runs]
        return table.to_csv(index=False)
    if fmt == "md":
        cell = lambda v: str(v).replace("|", "\\|")  # noqa: E731
        if "Runs" in table.columns:
            table["Runs"] = [", ".join(f"[{cell(n)}]({t.replace(' ', '%20')})" for n, t in r) for r in runs]
        header = "| " + " | ".join(cell(c) for c in table.columns) + " |"
        sep = "|" + "|".join("---" for _ in table.columns) + "|"
        body = ["| " + " | ".join(v if c == "Runs" else cell(v) for c, v in zip(table.columns, row)) + " |"
                for row in table.itertuples(index=False)]
        return "\n".join([header, sep, *body]) + "\n"
    if fmt == "html":
        buf = io.StringIO()
        table = table.map(lambda v: html.escape(str(v)))
        if "Runs" in table.columns:
            table["Runs"] = ["<br>".join(f"<a href='{html.escape(t)}'>{html.escape(n)}</a>" for n, t in r)
                             for r in runs]
        table.to_html(buf, index=False, escape=False, border=0)
        return ("<!doctype html><html><head><meta charset='utf-8'><title>openood_ext leaderboard</title>"
                "<style>table{border-collapse:collapse;font:13px sans-serif}td,th{padding:3px 8px;"
                "border-bottom:1px solid #ddd;text-align:right}</style></head><body>"
                f"<h1>Leaderboard</h1><p>{html.escape('Percent; mean ± std over seeds (mean alone for one seed).')}"
                f"</p>{buf.getvalue()}</body></html>\n")
    raise OpenOODError(f"--format: expected csv, md or html, got {fmt!r}")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit status 2 through the CLI, like every user error
        raise OpenOODError(f"leaderboard: {message} ({' '.join(self.format_usage().split())})")


def main(argv) -> int:
    parser = _Parser(prog="openood-ext leaderboard", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_dir", help="directory holding run directories (searched recursively)")
    parser.add_argument("-o", "--output", help="file to write (default: print to stdout)")
    parser.add_argument("--format", default=None, choices=["csv", "md", "html"],
                        help="default: from the output's suffix (.md, .html), else csv")
    parser.add_argument("--reference", help="CSV of published numbers to compare with, e.g. "
                                            "configs/reference/openood_v1.5_cifar10.csv")
    args = parser.parse_args([a for a in argv if a != "--debug"])
    suffix = Path(args.output or "").suffix.lower()
    if args.format is None and args.output and suffix not in FORMATS:
        raise OpenOODError(f"leaderboard -o {args.output}: unsupported output format "
                           f"'{suffix or '(no suffix)'}' (write .csv, .md or .html, or give --format csv|md|html)")
    fmt = args.format or FORMATS.get(suffix, "csv")
    table = build_leaderboard(args.results_dir, args.reference)
    if table.empty:
        warn(f"no complete test runs under {args.results_dir}")
    text = render(table, fmt, Path(args.output).parent if args.output else Path("."))
    if args.output:
        write_text(args.output, text)
        print(f"leaderboard: {len(table)} rows written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
