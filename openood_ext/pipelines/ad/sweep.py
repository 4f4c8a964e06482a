"""The ``ad_sweep`` pipeline: the AD protocol of the ``ad`` pipeline repeated for each value of one config
key, in one run directory, with a table and a plot of AUROC against the value (EOE's "AUROC vs number of
OE samples" and its multiscale filter curves).

    pipeline: ad_sweep
    ad_sweep:
      oe_limits: [1, 2, 4, 8, 16, all]    # trainer.outliers.limit; 'all' = the whole OE pool (null)
      # magnitudes: [0, 1, 2, 4, 8, 16]   # benchmark.preprocessor.ms_mode.magnitude (needs ms_mode)
      # key: trainer.epochs               # or any dotted key ...
      # values: [5, 10]                   # ... with its values
      # label: epochs                     # x-axis label (default: the key)

Everything else (``ad:``, benchmark, network, trainer) is the ``ad`` pipeline's config. Value v runs the
``ad`` protocol (:func:`.protocol.run_protocol`, in this run's process and log) in ``<run>/<name>_<v>/`` (cells ``normal_<c>/seed_<s>/`` with their
``result.json`` -- for an OE limit including the drawn subset, drawn anew per class x seed --, the value's
``metrics.json``/``metrics.csv``/``report.html`` and its ``config.yaml``). The run directory gets
``sweep.csv`` (one row per value: mean AUROC over classes of the seed means, std over classes, per-class
means), ``sweep_cells.csv`` (one row per value x class x seed), ``sweep.json`` and
``plots/sweep_auroc.png``. Every value is checked (data, OE pool size, network) before the run directory
is created; ``resume=true`` continues at the first unfinished cell.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ...config import save_config, to_plain
from ...errors import ConfigError
from ...schema import NonNegativeInt, PositiveInt, check_section
from ...utils.io import write_json, write_text, write_with
from ...utils.runtime import resolve_device
from ..context import RunContext
from ..registry import PIPELINES
from .cell import ADContext
from .protocol import ADPipelineBase, precheck, run_protocol
from .settings import ADSettings

SHORTHANDS = {  # ad_sweep key -> (config key, directory prefix, x label)
    "oe_limits": ("trainer.outliers.limit", "oe_limit", "number of OE samples"),
    "magnitudes": ("benchmark.preprocessor.ms_mode.magnitude", "magnitude", "filter magnitude"),
}


@dataclass
class ADSweepSettings:
    """The ``ad_sweep:`` section as given (its keys, typed for ``schema.check_arguments``); exactly one of
    ``oe_limits``, ``magnitudes`` or ``values`` (with ``key``) is set, :class:`SweepSpec` resolves it."""

    # None as a default means "not given"; a given value must fit the hint (null is no list)
    oe_limits: list[PositiveInt | Literal["all"] | None] = None  # 'all'/null: the whole OE pool
    magnitudes: list[NonNegativeInt] = None
    key: str = None
    values: list = None
    label: str = None


@dataclass
class SweepSpec:
    """The validated ``ad_sweep:`` section: the dotted ``key``, its ``values`` and their display labels."""

    key: str
    values: list
    labels: list[str]
    prefix: str
    xlabel: str

    @classmethod
    def from_config(cls, cfg: DictConfig) -> SweepSpec:
        spec = to_plain(cfg.get("ad_sweep"))
        if not isinstance(spec, dict) or not spec:
            raise ConfigError("ad_sweep: expected a mapping with oe_limits: [...], magnitudes: [...] or key/values")
        given = [k for k in (*SHORTHANDS, "values") if k in spec]
        if len(given) != 1:
            raise ConfigError(f"ad_sweep: give exactly one of oe_limits, magnitudes or key + values (got {given or 'none'})")
        try:
            check_section("ad_sweep", ADSweepSettings, spec)  # unknown keys, types and ranges
        except ConfigError as exc:
            limits = spec.get("oe_limits")
            zero = isinstance(limits, list) and any(type(v) is int and v == 0 for v in limits)
            hint = " (an objective without outliers is eoe_dsvdd, not limit 0)" if zero else ""
            raise ConfigError(f"{exc}{hint}") from None
        name = given[0]
        if name in SHORTHANDS:
            key, prefix, xlabel = SHORTHANDS[name]
        else:
            key = spec.get("key")
            if not isinstance(key, str) or not key:
                raise ConfigError("ad_sweep.key: expected a dotted config key (e.g. trainer.epochs) next to values")
            prefix, xlabel = key.rsplit(".", 1)[-1], key
        raw = spec[name]
        if not raw:
            raise ConfigError(f"ad_sweep.{name}: expected a non-empty list, got {raw!r}")
        values, labels = [], []
        for v in raw:
            if name == "oe_limits" and v == "all":
                v = None
            values.append(v)
            labels.append("all" if v is None else str(v))
        if len(set(labels)) != len(labels):
            raise ConfigError(f"ad_sweep.{name}: a value is listed twice in {raw}")
        bad = [lab for lab in labels if "/" in lab or lab.startswith(".")]
        if bad:
            raise ConfigError(f"ad_sweep.{name}: values must be usable in directory names, got {bad}")
        return cls(key, values, labels, prefix, spec.get("label") or xlabel)

    def config_for(self, cfg: DictConfig, value: Any) -> DictConfig:
        """A copy of ``cfg`` with ``key`` set to ``value`` (the key's parent must exist)."""
        parent = self.key.rsplit(".", 1)[0] if "." in self.key else None
        if parent is not None and OmegaConf.select(cfg, parent) is None:
            hint = " (set benchmark.preprocessor.ms_mode: {mode: lpf, parts: [...]})" if "ms_mode" in self.key else ""
            raise ConfigError(f"ad_sweep: the swept key {self.key} needs config section {parent}{hint}")
        sub = copy.deepcopy(cfg)
        OmegaConf.update(sub, self.key, value, merge=False)
        sub.pop("ad_sweep", None)
        return sub


@PIPELINES.register("ad_sweep")
class ADSweepPipeline(ADPipelineBase):
    """The ``ad`` protocol for every value of one key (see the module doc)."""

    config_sections = {**ADPipelineBase.config_sections, "ad_sweep": ADSweepSettings}

    def run(self) -> dict:
        cfg = self.cfg
        spec = SweepSpec.from_config(cfg)
        device = resolve_device(cfg.get("device", "auto"))
        runs = []
        for label, value in zip(spec.labels, spec.values):
            sub = spec.config_for(cfg, value)
            settings = ADSettings.from_config(sub)
            try:
                precheck(sub, settings, device)  # every value's problems before the run directory exists
            except ConfigError as exc:
                raise ConfigError(f"ad_sweep {spec.key}={label}: {exc}") from None
            runs.append((label, sub, settings))
        with RunContext(cfg) as ctx:
            ctx.log.info("AD sweep over %s: %s", spec.key, ", ".join(spec.labels))
            rows, cell_rows = [], []
            for label, sub, settings in runs:
                value_ctx = ADContext.of(ctx).under(ctx.dir / f"{spec.prefix}_{label}")
                save_config(sub, value_ctx.dir / "config.yaml")
                ctx.log.info("sweep %s = %s", spec.key, label)
                metrics = run_protocol(sub, settings, value_ctx)
                rows.append(sweep_row(spec, label, metrics))
                cell_rows += cell_records(spec, label, value_ctx.dir, settings)
            frame, cells = pd.DataFrame(rows), pd.DataFrame(cell_rows)
            write_text(ctx.dir / "sweep.csv", frame.to_csv(index=False))
            write_text(ctx.dir / "sweep_cells.csv", cells.to_csv(index=False))
            write_json(ctx.dir / "sweep.json", {"key": spec.key, "values": spec.labels, "xlabel": spec.xlabel,
                                                "rows": rows})
            sweep_plot(frame, spec, ctx.dir / "plots" / "sweep_auroc.png",
                       title=f"{cfg.trainer.get('name')} on {cfg.benchmark.get('name')}")
            ctx.log.info("sweep: %s", "; ".join(f"{r['value']}: {r['auroc_mean']:.4f}" for r in rows))
            run_dir = ctx.complete({"sweep_key": spec.key, "auroc_mean": {r["value"]: r["auroc_mean"] for r in rows}})
        return {"run_dir": str(run_dir), "key": spec.key,
                "auroc_mean": {r["value"]: r["auroc_mean"] for r in rows}}


def sweep_row(spec: SweepSpec, label: str, metrics: dict) -> dict:
    """One ``sweep.csv`` row: the value, mean/std over classes, the number of classes/seeds, class means."""
    row = {"key": spec.key, "value": label, "auroc_mean": metrics["auroc_mean"],
           "auroc_std_over_classes": metrics["auroc_std_over_classes"], "n_classes": len(metrics["per_class"]),
           "n_seeds": len(metrics["seeds"])}
    row.update({f"class_{c}": v["auroc_mean"] for c, v in metrics["per_class"].items()})
    return row


def cell_records(spec: SweepSpec, label: str, root: Path, settings: ADSettings) -> list[dict]:
    """One row per class x seed of value ``label``: AUROC and the OE subset the cell trained against."""
    rows = []
    for cls in settings.classes:
        for seed in settings.seeds:
            result = json.loads((root / f"normal_{cls}" / f"seed_{seed}" / "result.json").read_text())
            oe = result.get("outliers") or {}
            rows.append({"value": label, "class": cls, "seed": seed, "auroc": result["auroc"],
                         "oe_limit": oe.get("limit"), "oe_subset": " ".join(oe.get("subset") or [])})
    return rows


def sweep_plot(frame: pd.DataFrame, spec: SweepSpec, out: Path, title: str = "") -> Path:
    """AUROC (mean over classes of seed means, band = std over classes; thin lines per class) vs the value,
    values equally spaced in the order given (1, 2, 4, ... is a log2 axis)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x = np.arange(len(frame))
    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=110)
    for col in [c for c in frame.columns if c.startswith("class_")]:
        ax.plot(x, frame[col], lw=0.8, alpha=0.45, marker=".", label=col.removeprefix("class_"))
    mean, std = frame["auroc_mean"].to_numpy(float), frame["auroc_std_over_classes"].to_numpy(float)
    ax.fill_between(x, mean - std, mean + std, color="k", alpha=0.12, lw=0)
    ax.plot(x, mean, color="k", lw=2, marker="o", label="mean")
    ax.set_xticks(x, list(frame["value"]))
    ax.set_xlabel(spec.xlabel)
    ax.set_ylabel("AUROC (anomalous = positive)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, title="normal class", title_fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    write_with(out, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return out
