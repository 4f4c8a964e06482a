"""Writing a test run's results (metrics.csv, metrics.json, scores/*.npz) and printing its table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..utils.io import write_json, write_stream, write_text

TABLE_COLUMNS = [("id", "id_test", "accuracy", "ID acc"),
                 ("near", "nearood", "auroc", "Near AUROC"), ("near", "nearood", "fpr95", "Near FPR95"),
                 ("far", "farood", "auroc", "Far AUROC"), ("far", "farood", "fpr95", "Far FPR95")]


def save_scores(run_dir: Path, postprocessor: str, splits: dict[str, dict[str, np.ndarray]]) -> None:
    """``scores/<postprocessor>.npz`` with arrays ``<split>__conf``, ``<split>__pred``, ``<split>__label``."""
    arrays = {f"{split}__{k}": v for split, d in splits.items() for k, v in d.items()}
    write_stream(run_dir / "scores" / f"{postprocessor}.npz", lambda fh: np.savez(fh, **arrays))


def write_metrics(run_dir: Path, rows: list[dict], summary: dict) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["postprocessor", "dataset", "group", "metric", "value", "partial"])
    write_text(run_dir / "metrics.csv", frame.to_csv(index=False))
    write_json(run_dir / "metrics.json", summary)
    return frame


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per postprocessor: ID accuracy and near/far mean AUROC and FPR@95, in percent.

    A group mean over fewer sets than the benchmark defines is suffixed with '*'.
    """
    table = {}
    for pp, rows in frame.groupby("postprocessor", sort=False):
        line = {}
        for _, dataset, metric, label in TABLE_COLUMNS:
            hit = rows[(rows.dataset == dataset) & (rows.metric == metric)]
            if hit.empty:
                line[label] = "-"
            else:
                line[label] = f"{100 * hit.value.iloc[0]:.2f}" + ("*" if hit.partial.iloc[0] else "")
        table[pp] = line
    out = pd.DataFrame.from_dict(table, orient="index")
    out.index.name = "postprocessor"
    return out


def per_set_table(frame: pd.DataFrame) -> pd.DataFrame:
    """AUROC (%) per postprocessor (rows) and OOD set (columns)."""
    sets = frame[(frame.metric == "auroc")]
    return (sets.pivot_table(index="postprocessor", columns="dataset", values="value", sort=False) * 100).round(2)
