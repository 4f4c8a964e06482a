"""Per-epoch training history: ``history.json`` and a loss-curve plot in the run directory."""

from __future__ import annotations

from pathlib import Path

from ..utils.io import write_json, write_with

NOT_TERMS = ("epoch", "lr", "time_s", "images_per_s")


def write_history(run_dir: Path, history: list[dict]) -> Path:
    """``run_dir/history.json``: one record per epoch (every named term, lr, time, throughput)."""
    path = Path(run_dir) / "history.json"
    write_json(path, history)
    return path


def plot_loss_curves(history: list[dict], path: Path) -> Path | None:
    """One panel per named term (loss first) against the epoch, plus the learning rate; None if empty."""
    if not history:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    terms = [k for k in history[-1] if k not in NOT_TERMS]
    terms.sort(key=lambda k: (k != "loss", k))
    panels = terms + ["lr"]
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    epochs = [r["epoch"] for r in history]
    for ax, key in zip(axes.flat, panels):
        ax.plot(epochs, [r.get(key, float("nan")) for r in history], marker="o" if len(epochs) < 30 else None, ms=3)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
    return path
