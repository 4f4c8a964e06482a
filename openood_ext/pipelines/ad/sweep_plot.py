"""Several finished ``ad_sweep`` runs in one figure (e.g. EOE's OE-limit curve per objective)::

    python -m openood_ext.pipelines.ad.sweep_plot RUN_DIR [RUN_DIR ...] --out PNG [--csv CSV]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from ...utils.io import write_text, write_with


def compare_sweeps(run_dirs: list[Path], out_png: Path, out_csv: Path | None = None) -> pd.DataFrame:
    """Several finished ``ad_sweep`` runs over the same key (e.g. one per objective) in one figure: mean
    AUROC over classes (band: std over classes) against the value, one line per run, labelled by its
    trainer. Returns (and writes to ``out_csv``) the long table run x value x class (seed means)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    frames, xlabel = [], None
    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=110)
    for run_dir in map(Path, run_dirs):
        sweep = json.loads((run_dir / "sweep.json").read_text())
        cfg = OmegaConf.load(run_dir / "config.yaml")
        name = str(cfg.trainer.get("name"))
        frame = pd.DataFrame(sweep["rows"])
        x = np.arange(len(frame))
        mean, std = frame["auroc_mean"].to_numpy(float), frame["auroc_std_over_classes"].to_numpy(float)
        ax.fill_between(x, mean - std, mean + std, alpha=0.15, lw=0)
        ax.plot(x, mean, marker="o", lw=2, label=name)
        ax.set_xticks(x, list(frame["value"]))
        xlabel = sweep.get("xlabel", sweep["key"])
        for _, row in frame.iterrows():
            for col in [c for c in frame.columns if c.startswith("class_")]:
                frames.append({"trainer": name, "value": row["value"], "class": col.removeprefix("class_"),
                               "auroc_seed_mean": row[col]})
            frames.append({"trainer": name, "value": row["value"], "class": "mean", "auroc_seed_mean": row["auroc_mean"]})
    ax.set_xlabel(xlabel or "value")
    ax.set_ylabel("mean AUROC over classes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    write_with(out_png, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    table = pd.DataFrame(frames)
    if out_csv is not None:
        write_text(out_csv, table.to_csv(index=False))
    return table


def main(argv=None) -> int:
    """``python -m openood_ext.pipelines.ad.sweep_plot RUN_DIR [RUN_DIR ...] --out PNG [--csv CSV]``"""
    import argparse
    parser = argparse.ArgumentParser(description="Plot several finished ad_sweep runs in one figure.")
    parser.add_argument("runs", nargs="+", help="ad_sweep run directories (holding sweep.json)")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--csv", default=None, help="long table run x value x class to write")
    args = parser.parse_args(argv)
    missing = [r for r in args.runs if not (Path(r) / "sweep.json").is_file()]
    if missing:
        raise SystemExit(f"not a finished ad_sweep run (no sweep.json): {missing[0]}")
    compare_sweeps(args.runs, Path(args.out), Path(args.csv) if args.csv else None)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
